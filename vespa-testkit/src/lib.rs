//! Waiting in tests without guessing: poll a condition until it holds, within a failure
//! bound; when it never holds, fail naming what was awaited, the bound, and what the probe
//! saw last.
//!
//! A *probe* is a closure called until it reports the awaited value. It returns a `bool`, an
//! `Option<T>` (`None`: not yet) or a `Result<T, E>` (`Err(seen)`: not yet, and `seen`,
//! printed with `{:?}`, is what a failure reports as the last observation); other types can
//! implement [`Probe`]. The value the probe reports is what the wait returns.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use vespa_testkit::wait_until;
//!
//! let start = Instant::now();
//! let waited = wait_until("10 ms to pass", Duration::from_secs(5), || {
//!     let e = start.elapsed();
//!     if e >= Duration::from_millis(10) { Ok(e) } else { Err(e) }
//! });
//! assert!(waited >= Duration::from_millis(10));
//! ```
//!
//! The pause between two looks starts at [`FIRST_PAUSE`] and doubles up to [`MAX_PAUSE`]: a
//! condition that already holds costs one call, one that takes seconds is looked at twenty
//! times a second, and the timeout is only ever a failure bound, never a delay. The last look
//! is taken at the deadline, so a condition that holds by then is not reported as late.
//!
//! [`wait_until`] panics (a test's failure report, pointing at the caller's line);
//! [`try_wait_until`] returns [`TimedOut`] instead, for helpers that report errors (a daemon
//! that does not come up). [`wait_until_async`] and [`try_wait_until_async`] take probes that
//! return futures and pause on tokio's timer, so the runtime keeps running the tasks being
//! waited for (feature `tokio`, on by default).

use std::fmt;
use std::time::{Duration, Instant};

/// The first pause between two looks; each following one is twice as long, up to
/// [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause between two looks.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);

/// What one look of a probe found: the awaited value, or what was seen instead.
pub trait Probe {
    /// The awaited value.
    type Value;
    /// `Ok(value)` once the condition holds; otherwise the observation a failure reports.
    fn check(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: fmt::Debug> Probe for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// A probe's look at a count that grows towards `goal`: `Ok(value)` once it got there,
/// otherwise the value and the goal, for the failure message.
///
/// `wait_until("300 alerts", timeout, || at_least(count(), 300))` fails with "... the last
/// saw: 120 of at least 300".
pub fn at_least<T: PartialOrd + fmt::Debug>(value: T, goal: T) -> Result<T, String> {
    if value >= goal {
        Ok(value)
    } else {
        Err(format!("{value:?} of at least {goal:?}"))
    }
}

/// A wait that ended at its deadline without the condition holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What was awaited, as the caller named it.
    pub what: String,
    /// The failure bound.
    pub timeout: Duration,
    /// How many times the probe was called.
    pub looks: u32,
    /// What the last look saw.
    pub last: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {} ({} looks; the last saw: {})",
            self.timeout, self.what, self.looks, self.last
        )
    }
}

impl std::error::Error for TimedOut {}

/// The schedule of looks: pauses that double up to [`MAX_PAUSE`], the last one cut short to
/// end at the deadline.
struct Pace {
    deadline: Instant,
    timeout: Duration,
    pause: Duration,
    looks: u32,
}

impl Pace {
    fn new(timeout: Duration) -> Pace {
        Pace {
            deadline: Instant::now() + timeout,
            timeout,
            pause: FIRST_PAUSE,
            looks: 0,
        }
    }

    /// After a look that found `seen`: the pause before the next one, or the failure when
    /// the deadline has passed.
    fn after_miss(&mut self, what: &str, seen: String) -> Result<Duration, TimedOut> {
        self.looks += 1;
        let now = Instant::now();
        if now >= self.deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout: self.timeout,
                looks: self.looks,
                last: seen,
            });
        }
        let pause = self.pause.min(self.deadline - now);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Ok(pause)
    }
}

/// Calls `probe` until it reports the awaited value and returns that value; `Err` once
/// `timeout` has passed without it (see the crate docs for the schedule).
pub fn try_wait_until<P: Probe>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> P,
) -> Result<P::Value, TimedOut> {
    let mut pace = Pace::new(timeout);
    loop {
        match probe().check() {
            Ok(value) => return Ok(value),
            Err(seen) => std::thread::sleep(pace.after_miss(what, seen)?),
        }
    }
}

/// [`try_wait_until`], panicking at the caller's line when the wait times out, with what was
/// awaited, the timeout and the last observation.
#[track_caller]
pub fn wait_until<P: Probe>(what: &str, timeout: Duration, probe: impl FnMut() -> P) -> P::Value {
    match try_wait_until(what, timeout, probe) {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// [`try_wait_until`] for a probe that returns a future; the pauses are tokio sleeps, so the
/// runtime (a current-thread one too) keeps running other tasks meanwhile.
#[cfg(feature = "tokio")]
pub async fn try_wait_until_async<P, F>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<P::Value, TimedOut>
where
    P: Probe,
    F: std::future::Future<Output = P>,
{
    let mut pace = Pace::new(timeout);
    loop {
        match probe().await.check() {
            Ok(value) => return Ok(value),
            Err(seen) => tokio::time::sleep(pace.after_miss(what, seen)?).await,
        }
    }
}

/// [`try_wait_until_async`], panicking when the wait times out; the message names the
/// caller's line (an async function cannot carry `#[track_caller]` into its body).
#[cfg(feature = "tokio")]
#[track_caller]
pub fn wait_until_async<'a, P, F>(
    what: &'a str,
    timeout: Duration,
    probe: impl FnMut() -> F + 'a,
) -> impl std::future::Future<Output = P::Value> + 'a
where
    P: Probe + 'a,
    F: std::future::Future<Output = P> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        match try_wait_until_async(what, timeout, probe).await {
            Ok(value) => value,
            Err(e) => panic!("{e}, awaited at {caller}"),
        }
    }
}

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn returns_the_probes_value_as_soon_as_it_holds() {
        let looks = Cell::new(0);
        let v = wait_until("the third look", Duration::from_secs(5), || {
            looks.set(looks.get() + 1);
            (looks.get() == 3).then_some(looks.get() * 10)
        });
        assert_eq!((v, looks.get()), (30, 3), "the value of the look that held");
        let start = Instant::now();
        wait_until("a condition that holds", Duration::from_secs(5), || true);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "no pause before the first look"
        );
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_the_last_observation() {
        let n = Cell::new(0u32);
        let e = try_wait_until("n to reach a million", Duration::from_millis(30), || {
            n.set(n.get() + 1);
            if n.get() >= 1_000_000 {
                Ok(())
            } else {
                Err(format!("n = {}", n.get()))
            }
        })
        .expect_err("30 ms are not enough");
        assert_eq!(e.what, "n to reach a million");
        assert_eq!(e.timeout, Duration::from_millis(30));
        assert_eq!(e.looks, n.get(), "every look counted");
        assert_eq!(e.last, format!("{:?}", format!("n = {}", n.get())));
        assert_eq!(
            e.to_string(),
            format!(
                "timed out after 30ms waiting for n to reach a million ({} looks; the last saw: \"n = {}\")",
                e.looks,
                n.get()
            )
        );
    }

    #[test]
    fn at_least_reports_the_count_and_its_goal() {
        assert_eq!(at_least(3, 3), Ok(3));
        assert_eq!(at_least(2, 3), Err("2 of at least 3".into()));
        let e = try_wait_until("5 things", Duration::from_millis(5), || at_least(4u64, 5))
            .expect_err("4 never grows");
        assert!(
            e.to_string()
                .ends_with("the last saw: \"4 of at least 5\")"),
            "{e}"
        );
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for the impossible (")]
    fn wait_until_panics_with_the_failure() {
        wait_until("the impossible", Duration::from_millis(10), || None::<()>);
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_end_at_the_deadline() {
        let mut pace = Pace::new(Duration::from_secs(60));
        let pauses: Vec<u128> = (0..7)
            .map(|_| {
                pace.after_miss("x", String::new())
                    .expect("far from the deadline")
            })
            .map(|p| p.as_millis())
            .collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 50, 50]);
        let mut pace = Pace::new(Duration::from_millis(5));
        pace.pause = MAX_PAUSE;
        let p = pace
            .after_miss("x", String::new())
            .expect("before the deadline");
        assert!(p <= Duration::from_millis(5), "cut to the deadline: {p:?}");
    }

    #[tokio::test]
    async fn the_async_wait_lets_the_awaited_task_run() {
        // A current-thread runtime: a blocking pause would starve the task that sets the flag.
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            f.store(true, Ordering::Relaxed);
        });
        let flag = &flag;
        let seen = wait_until_async(
            "the task's flag",
            Duration::from_secs(5),
            move || async move { flag.load(Ordering::Relaxed).then_some("set") },
        )
        .await;
        assert_eq!(seen, "set");
        let e = try_wait_until_async("never", Duration::from_millis(10), || async {
            Err::<(), _>(7)
        })
        .await
        .expect_err("never holds");
        assert_eq!((e.what.as_str(), e.last.as_str()), ("never", "7"));
    }
}
