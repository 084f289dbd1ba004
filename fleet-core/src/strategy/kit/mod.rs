//! The planning kit the six strategies share: a plan draft that keeps
//! `max_nodes`/`min_nodes` honest, supply/demand matching, the choice of
//! nodes to buy, keep, snapshot or delete, the elastic plan three strategies
//! share, and the idle-cost math and words of `describe()`. Not public, so
//! that every strategy counts capacity the same way.

mod describe;
mod draft;
mod elastic;
mod matching;
mod select;
mod spare;

pub(super) use describe::{
    billing_words, hour_of, idle_with_snapshot, idle_words, ms, priced, snapshot_hourly,
};
pub(super) use draft::{Draft, idle_start, is_idle_ready, is_live};
pub(super) use elastic::{Elastic, plan_elastic};
pub(super) use matching::{Matching, fits, match_pending, size_key};
pub(super) use select::{
    create_for, delete_idle, market_for, maybe_snapshot, offering_or_baseline, preferred_source,
    primaries,
};
pub(super) use spare::{keep_spare, spare_count, spare_target, start_spare};
