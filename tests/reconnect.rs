//! Reconnect delays: each within half and all of a ceiling that doubles up
//! to the maximum, back to the start after a success, and different from
//! agent to agent so that a fleet does not reconnect in lockstep.

use std::time::Duration;

use roxyd::reconnect::{Backoff, BackoffConfig};
#[cfg(feature = "test-backend")]
use rstest::rstest;

const CONFIG: BackoffConfig = BackoffConfig {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

#[cfg(feature = "test-backend")]
#[rstest]
#[case::seed_1(1)]
#[case::seed_2(2)]
#[case::seed_3(0xdead_beef)]
fn delays_stay_between_half_and_all_of_a_doubling_ceiling(#[case] seed: u64) {
    let mut backoff = Backoff::seeded(CONFIG, seed);
    let expected_ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60].map(Duration::from_secs);
    for ceiling in expected_ceilings {
        assert_eq!(backoff.ceiling(), ceiling);
        let delay = backoff.next_delay();
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "{delay:?} outside [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }
    backoff.reset();
    assert_eq!(backoff.ceiling(), CONFIG.initial);
}

#[cfg(feature = "test-backend")]
#[test]
fn the_ceiling_saturates_after_very_many_failures() {
    let mut backoff = Backoff::seeded(CONFIG, 7);
    for _ in 0..1_000 {
        assert!(backoff.next_delay() <= CONFIG.max);
    }
    assert_eq!(backoff.ceiling(), CONFIG.max);
}

#[cfg(feature = "test-backend")]
#[test]
fn agents_do_not_reconnect_in_lockstep() {
    let delays = |seed| {
        let mut backoff = Backoff::seeded(CONFIG, seed);
        (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
    };
    let fleet: Vec<Vec<Duration>> = (0..16).map(delays).collect();
    // Every pair of agents differs in its first delay already.
    for (i, a) in fleet.iter().enumerate() {
        for b in &fleet[i + 1..] {
            assert_ne!(a[0], b[0]);
        }
    }
}

/// The same for the backoff the daemon uses, which draws from the operating
/// system: were it seeded with a constant, every agent would wait the same.
#[test]
fn agents_with_os_randomness_do_not_reconnect_in_lockstep() {
    let fleet: Vec<Vec<Duration>> = (0..16)
        .map(|_| {
            let mut backoff = Backoff::new(CONFIG);
            (0..8).map(|_| backoff.next_delay()).collect()
        })
        .collect();
    // Eight draws of half a second or more each, in microseconds: two
    // agents drawing the same eight by chance is beyond any run's luck.
    for (i, a) in fleet.iter().enumerate() {
        for b in &fleet[i + 1..] {
            assert_ne!(a, b, "two agents reconnect in lockstep");
        }
    }
}
