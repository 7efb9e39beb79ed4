//! The same inputs give the same outcomes in this process and in a pool:
//! fixed inputs, then generated ones (proptest). The pool is shared by all
//! the tests of this file (`assert_same_in_pool` uses `shared_pool()`).

use billiard_testing::{plugin, ErrorKind, TaskError};
use plugin_template::{Sample, Summary};
use proptest::prelude::*;

#[test]
fn fixed_inputs_agree() {
    let h = plugin!();
    let counts: Vec<Result<u64, TaskError>> =
        h.assert_same_in_pool("count_primes", (0..50u64).map(|n| (n,)));
    assert_eq!(counts[10], Ok(4));

    let inputs = [(vec![1.0, 2.0], 0), (vec![], 0), (vec![1.0, 2.0, 3.0], 2)];
    let summaries: Vec<Result<Summary, TaskError>> = h.assert_same_in_pool(
        "summarize",
        inputs.iter().map(|(values, trim)| {
            (Sample {
                values: values.clone(),
                trim: *trim,
            },)
        }),
    );
    assert_eq!(summaries[0].as_ref().map(|s| s.count), Ok(2));
    assert_eq!(
        summaries[1].as_ref().unwrap_err().kind,
        ErrorKind::TaskError
    );
    assert_eq!(summaries[2].as_ref().unwrap_err().kind, ErrorKind::Panic);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn summarize_agrees_and_is_right(
        samples in prop::collection::vec(
            (prop::collection::vec(-1e6f64..1e6, 0..20), 0usize..12),
            1..20,
        )
    ) {
        let out: Vec<Result<Summary, TaskError>> = plugin!().assert_same_in_pool(
            "summarize",
            samples.iter().map(|(values, trim)| (Sample { values: values.clone(), trim: *trim },)),
        );
        for ((values, trim), got) in samples.iter().zip(out) {
            let n = values.len();
            match got {
                Ok(s) => {
                    prop_assert!(2 * trim < n);
                    prop_assert_eq!(s.count as usize, n - 2 * trim);
                }
                Err(e) if n == 0 || 2 * trim == n => prop_assert_eq!(e.kind, ErrorKind::TaskError),
                // More trimmed than there are values: a panic.
                Err(e) => {
                    prop_assert!(2 * trim > n);
                    prop_assert_eq!(e.kind, ErrorKind::Panic);
                }
            }
        }
    }
}
