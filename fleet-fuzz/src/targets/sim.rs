//! The simulator's input (`fleet_sim::input::parse`: JSON, comments
//! stripped, every field validated, the price book resolved), and for an
//! input that validates, the arrivals its forecast generates.

use super::Target;
use crate::mutate::{self, Rng};

pub(super) struct SimInput;

impl Target for SimInput {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        match fleet_sim::input::parse(input) {
            Ok(scenario) => {
                let arrivals = fleet_sim::forecast::arrivals(&scenario);
                if let Some(a) = arrivals
                    .jobs
                    .iter()
                    .find(|a| a.requirements >= arrivals.requirements.len())
                {
                    return Err(format!(
                        "an arrival names requirements #{} of {}",
                        a.requirements,
                        arrivals.requirements.len()
                    ));
                }
                Ok("ok".to_owned())
            }
            Err(e) => Ok(format!(
                "{:?} {}",
                e.kind(),
                super::label_of(e.json_path().unwrap_or(""))
            )),
        }
    }

    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        mutate::json(input, pool, rng)
    }
}
