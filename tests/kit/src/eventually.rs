//! Bounded polling: look at something until it holds, for at most a given time, then fail with
//! what was awaited. Every wait in the tests is one of these, so none can hang a suite and each
//! failure names what did not happen.
//!
//! The shape is the same everywhere: look, and if it does not hold yet and there is time left,
//! pause and look again. The last look may come up to one pause after the deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait for something and how often to look; a bare [`Duration`] converts into one
/// with the [default pace](Patience::DEFAULT_EVERY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Give up after this long.
    pub timeout: Duration,
    /// Pause this long between looks.
    pub every: Duration,
}

impl Patience {
    /// The pace for state in this process (cheap to look at, often short-lived).
    pub const DEFAULT_EVERY: Duration = Duration::from_millis(20);

    /// Wait up to `timeout`, looking at the default pace.
    pub const fn within(timeout: Duration) -> Self {
        Self {
            timeout,
            every: Self::DEFAULT_EVERY,
        }
    }

    /// The same patience, looking every `every` instead (for looks that cost something: a
    /// process to run, a server to ask).
    pub const fn every(self, every: Duration) -> Self {
        Self {
            timeout: self.timeout,
            every,
        }
    }

    fn start(self) -> Clock {
        Clock {
            deadline: Instant::now() + self.timeout,
            every: self.every,
        }
    }
}

impl From<Duration> for Patience {
    fn from(timeout: Duration) -> Self {
        Self::within(timeout)
    }
}

/// A started wait: the one place that decides whether to look again.
struct Clock {
    deadline: Instant,
    every: Duration,
}

impl Clock {
    /// The pause before the next look, or `None` when the time is up.
    fn pause(&self) -> Option<Duration> {
        (Instant::now() < self.deadline).then_some(self.every)
    }
}

/// Look with `check` until it yields `Some`, or give up (`None`) when `patience` runs out. For
/// callers that report a timeout in their own way (an error value, a richer message).
pub async fn poll<T, F, Fut>(patience: impl Into<Patience>, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let clock = patience.into().start();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(clock.pause()?).await;
    }
}

/// Look with `check` until it yields `Some` and return that, or panic naming `what` when
/// `patience` runs out: the wait of a test.
pub async fn eventually<T, F, Fut>(what: &str, patience: impl Into<Patience>, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let patience = patience.into();
    match poll(patience, check).await {
        Some(v) => v,
        None => panic!("timed out after {:?} waiting for: {what}", patience.timeout),
    }
}

/// [`eventually`] for a condition that needs no awaiting (a counter, a flag).
pub async fn eventually_true(
    what: &str,
    patience: impl Into<Patience>,
    mut cond: impl FnMut() -> bool,
) {
    eventually(what, patience, || std::future::ready(cond().then_some(()))).await
}

/// [`poll`] for code that cannot await (a `OnceLock` initialiser, a `Drop`): the same rule, with
/// the thread sleeping between looks.
pub fn poll_blocking<T>(
    patience: impl Into<Patience>,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let clock = patience.into().start();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        std::thread::sleep(clock.pause()?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_what_the_check_yields_once_it_holds() {
        let mut n = 0;
        let v = eventually("the third look", Duration::from_secs(5), || {
            n += 1;
            std::future::ready((n == 3).then_some(n))
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_timeout_with_one_last_look() {
        let t = Instant::now();
        let mut looks = 0;
        let patience =
            Patience::within(Duration::from_millis(100)).every(Duration::from_millis(30));
        let r: Option<()> = poll(patience, || {
            looks += 1;
            std::future::ready(None)
        })
        .await;
        assert!(r.is_none());
        assert!(t.elapsed() >= Duration::from_millis(100));
        // Looks at 0, 30, 60, 90 and a last one at ~120 ms.
        assert!((4..=6).contains(&looks), "{looks} looks");
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for: never")]
    async fn eventually_panics_naming_what_it_waited_for() {
        eventually_true("never", Duration::from_millis(50), || false).await;
    }

    #[test]
    fn blocking_polls_by_the_same_rule() {
        let mut n = 0;
        let v = poll_blocking(Duration::from_secs(5), || {
            n += 1;
            (n == 2).then_some("done")
        });
        assert_eq!(v, Some("done"));
        assert_eq!(poll_blocking(Duration::ZERO, || None::<()>), None);
    }
}
