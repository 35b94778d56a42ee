//! A shared token bucket for upload rate limits. Debt-based: a caller takes what it
//! needs and sleeps off any deficit, so large and small writes are treated fairly and
//! the long-run rate never exceeds the limit.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Limits bytes per second across every task that shares it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter allowing `bytes_per_sec` on average, with a burst of 1/10 s worth
    /// (at least 16 KiB) so small transfers are not delayed at all.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 10.0).max(16.0 * 1024.0);
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `n` bytes' worth of tokens, waiting as long as the bucket is in debt.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().unwrap();
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses sizes and rates such as `10MB`, `512KiB`, `1.5G`, `100000` (bytes).
/// Decimal units are powers of 1000, binary (`KiB`, `MiB`, `GiB`) powers of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 10MB, 512KiB or 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let v = num * mult;
    if !v.is_finite() || !(1.0..=1e15).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Formats a byte count for people: `271 KB`, `2.7 MB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{} KB", n / 1000),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_bytes("512KiB").unwrap(), 524_288);
        assert_eq!(parse_bytes("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("100000").unwrap(), 100_000);
        assert_eq!(parse_bytes("2mb/s").unwrap(), 2_000_000);
        assert!(parse_bytes("fast").is_err());
        assert!(parse_bytes("10XB").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_rate_is_the_limit() {
        let rl = RateLimiter::new(1_000_000);
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            rl.acquire(100_000).await; // 5 MB in total
        }
        let secs = start.elapsed().as_secs_f64();
        // 5 MB at 1 MB/s, less the initial burst of 0.1 s.
        assert!((4.8..=5.1).contains(&secs), "took {secs}s");
    }
}
