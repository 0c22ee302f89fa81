//! Limits a server may put on its peers (all off by default): a message rate per
//! connection, applied by `engine::reader` before it takes its worker, and a
//! number of connections per IP address, applied by the server's accept loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A connection's message rate limit: a token bucket of `burst` messages refilled
/// at `per_sec` (kept as the "theoretical arrival time" of the next message, which
/// needs one instant instead of a token count and a refill time).
///
/// The reader takes the tokens for the messages of a read before handling them and
/// waits when there are none, without holding its worker: a peer sending faster
/// than the limit is slowed down by TCP (nothing is dropped, nothing piles up).
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    interval: Duration,
    burst: u32,
    next: Instant,
}

impl RateLimit {
    /// `None` when `per_sec` is 0 (no limit). `burst` 0 means one second's worth.
    /// A clone made later starts with a full bucket (its start is in the past).
    pub(crate) fn new(per_sec: u32, burst: u32) -> Option<RateLimit> {
        if per_sec == 0 {
            return None;
        }
        Some(RateLimit {
            interval: Duration::from_secs(1) / per_sec,
            burst: if burst == 0 { per_sec } else { burst },
            next: Instant::now(),
        })
    }

    /// The most messages handled without a pause.
    pub(crate) fn burst(&self) -> usize {
        self.burst as usize
    }

    /// Takes `n` messages' worth (at most [`burst`](Self::burst)) at `now`; returns
    /// how long to wait before handling them.
    pub(crate) fn acquire(&mut self, now: Instant, n: usize) -> Duration {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.burst);
        let start = self.next.max(now);
        self.next = start + self.interval * n;
        let allowed_until = now + self.interval * self.burst;
        self.next.saturating_duration_since(allowed_until)
    }
}

/// Connections per IP address, for `MaxConnPerIP`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PerIp {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// Takes a slot for `ip` if it has fewer than `max` connections (boxed: it is
    /// held by every connection's task). IPv6 addresses count by their /64
    /// network, the block one host is usually given; IPv4-mapped ones as IPv4.
    pub(crate) fn try_take(&self, ip: IpAddr, max: usize) -> Option<Box<IpSlot>> {
        let ip = counted_as(ip);
        let mut counts = self.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Box::new(IpSlot {
            per_ip: self.clone(),
            ip,
        }))
    }

    /// Addresses holding at least one connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each change is one insert or decrement: a poisoned map is consistent.
        crate::util::lock(&self.counts)
    }
}

/// The address a connection is counted under.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One connection's place in its address's count; dropped with the connection.
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: PerIp,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let mut rate = RateLimit::new(10, 5).unwrap();
        let now = Instant::now();
        // Five at once are free; the next five wait for half a second.
        assert_eq!(rate.acquire(now, 5), Duration::ZERO);
        assert_eq!(rate.acquire(now, 5), Duration::from_millis(500));
        // One more right after: 100 ms later than those.
        assert_eq!(rate.acquire(now, 1), Duration::from_millis(600));
        // After a quiet second the bucket is full again.
        let later = now + Duration::from_secs(2);
        assert_eq!(rate.acquire(later, 5), Duration::ZERO);
        assert!(RateLimit::new(0, 5).is_none());
        assert_eq!(RateLimit::new(20, 0).unwrap().burst(), 20);
    }

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let per_ip = PerIp::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = per_ip.try_take(a, 2).unwrap();
        let s2 = per_ip.try_take(a, 2).unwrap();
        assert!(per_ip.try_take(a, 2).is_none());
        let s3 = per_ip.try_take(b, 2).unwrap();
        drop(s1);
        let s4 = per_ip.try_take(a, 2).unwrap();
        drop((s2, s3, s4));
        assert_eq!(per_ip.addresses(), 0, "empty entries are removed");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let per_ip = PerIp::default();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = per_ip.try_take(one, 1).unwrap();
        assert!(per_ip.try_take(same_64, 1).is_none());
        let _b = per_ip.try_take(other_64, 1).unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _c = per_ip.try_take(v4, 1).unwrap();
        assert!(per_ip.try_take(mapped, 1).is_none());
    }
}
