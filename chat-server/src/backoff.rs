//! Exponential backoff between retries (100 ms doubling to 5 s), cut short by shutdown. Used by
//! every task that retries the broker, the log or a peer.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(5);

/// Shutdown was requested while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// The delay before the next retry.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: FIRST }
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Sleeps for the current delay and doubles it; returns early with [`Cancelled`] on shutdown.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> Result<(), Cancelled> {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            _ = shutdown.cancelled() => Err(Cancelled),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_resets() {
        let token = CancellationToken::new();
        let mut b = Backoff::new();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let start = tokio::time::Instant::now();
            b.wait(&token).await.unwrap();
            delays.push(start.elapsed().as_millis());
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        let start = tokio::time::Instant::now();
        b.wait(&token).await.unwrap();
        assert_eq!(start.elapsed().as_millis(), 100);
        token.cancel();
        assert_eq!(b.wait(&token).await, Err(Cancelled));
    }
}
