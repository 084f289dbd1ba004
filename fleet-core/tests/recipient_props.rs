//! The recipient check the controller runs on a claim request, held to the
//! `age` crate's own parser (what the daemon's sealer calls): every string
//! it accepts, age accepts, and the other way round.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::str::FromStr;

use bech32::{Bech32, Bech32m, Fe32, Fe32IterExt, Hrp};
use fleet_core::protocol::{AGE_X25519_RECIPIENT_LEN, x25519_recipient_key};
use proptest::prelude::*;

/// What the sealer (`fleet_runtime::seal::Sealer::seal`) parses a recipient with.
fn age_accepts(s: &str) -> bool {
    age::x25519::Recipient::from_str(s).is_ok()
}

fn agree(s: &str) -> Result<(), TestCaseError> {
    let ours = x25519_recipient_key(s);
    prop_assert_eq!(
        ours.is_ok(),
        age_accepts(s),
        "{:?}: ours {:?}, age disagrees",
        s,
        ours
    );
    Ok(())
}

/// Recipients made by age itself, as a claimant's `age-keygen` would.
fn generated(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| age::x25519::Identity::generate().to_public().to_string())
        .collect()
}

#[test]
fn every_recipient_age_generates_is_accepted_with_its_key() {
    for r in generated(256) {
        assert_eq!(r.len(), AGE_X25519_RECIPIENT_LEN);
        let key = x25519_recipient_key(&r).unwrap_or_else(|e| panic!("{r}: {e}"));
        // The key read back encodes to the same string.
        let again = bech32::encode::<Bech32>(Hrp::parse_unchecked("age"), &key).unwrap();
        assert_eq!(again, r);
        assert_eq!(x25519_recipient_key(&r.to_uppercase()), Ok(key));
        assert!(age_accepts(&r.to_uppercase()));
    }
}

/// One edit of a valid recipient.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Delete(usize),
    Insert(usize, char),
    SwapWithNext(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // The Bech32 charset, its upper case, the separator, the four letters it
    // leaves out, and a few that are never allowed.
    let c = prop::sample::select(
        "qpzry9x8gf2tvdw0s3jn54khce6mua7lQPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L1bioB -_é"
            .chars()
            .collect::<Vec<_>>(),
    );
    let at = 0usize..AGE_X25519_RECIPIENT_LEN;
    prop_oneof![
        (at.clone(), c.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        at.clone().prop_map(Edit::Delete),
        (0usize..=AGE_X25519_RECIPIENT_LEN, c).prop_map(|(i, c)| Edit::Insert(i, c)),
        (0usize..AGE_X25519_RECIPIENT_LEN - 1).prop_map(Edit::SwapWithNext),
    ]
}

fn apply(s: &str, e: &Edit) -> String {
    let mut cs: Vec<char> = s.chars().collect();
    match *e {
        Edit::Replace(i, c) => cs[i] = c,
        Edit::Delete(i) => {
            cs.remove(i);
        }
        Edit::Insert(i, c) => cs.insert(i, c),
        Edit::SwapWithNext(i) => cs.swap(i, i + 1),
    }
    cs.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// A recipient with one character changed, dropped, added or swapped
    /// is refused (Bech32 detects it), and age refuses it too.
    #[test]
    fn one_edit_of_a_valid_recipient_is_refused(pick in 0usize..8, e in edit()) {
        let originals = ORIGINALS.with(|o| o.clone());
        let original = &originals[pick];
        let mutated = apply(original, &e);
        agree(&mutated)?;
        if mutated != *original {
            prop_assert!(
                x25519_recipient_key(&mutated).is_err(),
                "{:?} of {} was accepted: {}", e, original, mutated
            );
        }
    }

    /// Strings built from age's alphabet, with and without its prefixes:
    /// accepted exactly when age accepts them.
    #[test]
    fn arbitrary_strings_are_judged_like_age(
        s in "(age1|AGE1|age1yubikey1|Age1)?[qpzry9x8gf2tvdw0s3jn54khce6mua7lQPZ1bio]{0,70}"
    ) {
        agree(&s)?;
    }

    /// Any 32 bytes, encoded with either checksum under `age` or another
    /// part: only Bech32 under `age` is a recipient, and it yields the bytes.
    #[test]
    fn encodings_of_any_bytes_are_judged_like_age(
        bytes in prop::collection::vec(any::<u8>(), 30..35),
        hrp in prop::sample::select(vec!["age", "age1yubikey", "agf", "bc"]),
        bech32m in any::<bool>(),
    ) {
        let h = Hrp::parse(hrp).unwrap();
        let s = if bech32m {
            bech32::encode::<Bech32m>(h, &bytes)
        } else {
            bech32::encode::<Bech32>(h, &bytes)
        }
        .unwrap();
        agree(&s)?;
        let valid = hrp == "age" && !bech32m && bytes.len() == 32;
        prop_assert_eq!(x25519_recipient_key(&s).is_ok(), valid, "{}", s);
        if valid {
            prop_assert_eq!(x25519_recipient_key(&s).unwrap().to_vec(), bytes);
        }
    }

    /// Any 5-bit groups with a valid Bech32 checksum under `age`, around the
    /// 52 that make 32 bytes, including non-zero padding bits in the last
    /// group: judged like age.
    #[test]
    fn any_checksummed_groups_are_judged_like_age(
        groups in prop::collection::vec(0usize..32, 50..55),
    ) {
        const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        let hrp = Hrp::parse_unchecked("age");
        let s: String = groups
            .iter()
            .map(|&g| Fe32::from_char(char::from(CHARSET[g])).unwrap())
            .with_checksum::<Bech32>(&hrp)
            .chars()
            .collect();
        agree(&s)?;
    }
}

thread_local! {
    static ORIGINALS: Vec<String> = generated(8);
}
