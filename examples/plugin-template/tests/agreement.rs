//! The same inputs give the same outcomes in this process and in a pool:
//! fixed inputs, then generated ones (proptest). The pool is shared by all
//! the tests of this file (`assert_same_in_pool` uses `shared_pool()`).

use billiard_testing::{plugin, ErrorKind, TaskError};
use proptest::prelude::*;

#[test]
fn fixed_inputs_agree() {
    let h = plugin!();
    let quotients: Vec<Result<i64, TaskError>> =
        h.assert_same_in_pool("divide", [(7i64, 2i64), (-9, 3), (1, 0)]);
    assert_eq!(quotients[0], Ok(3));
    assert_eq!(quotients[1], Ok(-3));
    assert_eq!(quotients[2].as_ref().unwrap_err().kind, ErrorKind::Panic);

    let counts: Vec<Result<u64, TaskError>> =
        h.assert_same_in_pool("count_primes", (0..50u64).map(|n| (n,)));
    assert_eq!(counts[10], Ok(4));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn divide_agrees_and_is_right(
        inputs in prop::collection::vec((any::<i64>(), -5i64..5), 1..40)
    ) {
        let out: Vec<Result<i64, TaskError>> =
            plugin!().assert_same_in_pool("divide", inputs.clone());
        for ((a, b), got) in inputs.iter().zip(out) {
            match a.checked_div(*b) {
                Some(q) => prop_assert_eq!(got, Ok(q)),
                // Division by zero, or i64::MIN / -1: a panic either way.
                None => prop_assert_eq!(got.unwrap_err().kind, ErrorKind::Panic),
            }
        }
    }

    #[test]
    fn greet_agrees(names in prop::collection::vec(".{0,20}", 1..20)) {
        let out: Vec<Result<String, TaskError>> =
            plugin!().assert_same_in_pool("greet", names.iter().map(|n| (n.clone(),)));
        for (name, got) in names.iter().zip(out) {
            prop_assert_eq!(got, Ok(format!("Hello, {name}!")));
        }
    }
}
