//! Slow start (SPEC §9): a backend that starts taking traffic — new, healthy again, its
//! breaker closed again, undrained — gets a weight growing linearly from 10% to 100% of its
//! own over the pool's `slow_start`. A background task works the ramps out a few times a
//! second into one atomic per backend; the balancers only read it ([`super::Pool::pick`]).

use super::backend::{RAMP_FLOOR, RAMP_FULL};
use super::{Backend, BackendId, Registry};
use crate::breaker::BreakerState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the ramps are worked out.
pub const TICK: Duration = Duration::from_millis(200);

/// Run until `stop`: every [`TICK`], update the ramps of the registry's backends.
pub async fn run(registry: Arc<Registry>, stop: CancellationToken) {
    let mut ramps = Ramps::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        ramps.update(&registry.current(), Instant::now());
    }
}

/// What the task remembers of each backend.
#[derive(Debug, Clone, Copy)]
struct Track {
    /// Taking traffic at the last look.
    up: bool,
    /// When it last started taking traffic; None once fully ramped.
    since: Option<Instant>,
    /// The update that saw it last (the others are forgotten).
    seen: u64,
}

/// The ramps of a set of backends, worked out tick by tick.
#[derive(Debug, Default)]
pub struct Ramps {
    tracks: HashMap<BackendId, Track>,
    round: u64,
}

/// Does the backend take traffic (the breaker closed, not merely half-open)?
fn is_up(b: &Backend) -> bool {
    b.is_healthy() && !b.is_draining() && b.breaker.state() == BreakerState::Closed
}

impl Ramps {
    /// Work out every backend's ramp at `now`. `backends` come grouped by pool (registry
    /// order); a backend's balancer ramp is its own relative to the most advanced one of its
    /// pool that takes traffic, so a pool whose backends all start together serves at once.
    pub fn update(&mut self, backends: &[Arc<Backend>], now: Instant) {
        self.round += 1;
        let round = self.round;
        let mut own: Vec<u32> = Vec::with_capacity(backends.len());
        for b in backends {
            let Some(span) = b.pool_config().slow_start else {
                self.tracks.remove(&b.id);
                own.push(RAMP_FULL);
                continue;
            };
            let up = is_up(b);
            let t = self.tracks.entry(b.id.clone()).or_insert_with(|| Track {
                up,
                // Created at 10% by the registry (new): it ramps from now.
                since: (b.ramp_own() < RAMP_FULL).then_some(now),
                seen: round,
            });
            t.seen = round;
            if up && !t.up {
                t.since = Some(now);
            }
            t.up = up;
            let r = if !up {
                // Whenever it comes back, it comes back at 10%.
                RAMP_FLOOR
            } else {
                match t.since {
                    None => RAMP_FULL,
                    Some(s) => {
                        let f = now.saturating_duration_since(s).as_secs_f64() / span.as_secs_f64();
                        if f >= 1.0 {
                            t.since = None;
                            RAMP_FULL
                        } else {
                            RAMP_FLOOR + ((RAMP_FULL - RAMP_FLOOR) as f64 * f) as u32
                        }
                    }
                }
            };
            own.push(r);
        }
        let mut i = 0;
        while i < backends.len() {
            let pool = &backends[i].id.pool;
            let end = i + backends[i..]
                .iter()
                .take_while(|b| &b.id.pool == pool)
                .count();
            let top = (i..end)
                .filter(|&j| is_up(&backends[j]))
                .map(|j| own[j])
                .max()
                .unwrap_or(RAMP_FULL)
                .max(RAMP_FLOOR);
            for j in i..end {
                let rel = (own[j] as u64 * RAMP_FULL as u64 / top as u64) as u32;
                backends[j].set_ramp(own[j], rel.max(1));
            }
            i = end;
        }
        self.tracks.retain(|_, t| t.seen == round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::Pool;

    /// Pool `p` of two backends of weight 1 (the second one is the one that ramps), with
    /// `slow_start = "10s"` and this balancer, through the real registry.
    fn pool(lb: &str) -> (Arc<Registry>, Arc<Pool>) {
        let text = format!(
            "[pools.p]\nbackends = [\"127.0.0.1:9\", \"127.0.0.2:9\"]\nslow_start = \"10s\"\nlb = \"{lb}\"\n\
             [[routes]]\nname = \"r\"\nsplit = {{ p = 1 }}\n"
        );
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let registry = Arc::new(Registry::new(None));
        let (pools, _, _) = registry.sync(&config, None).unwrap();
        (registry, pools["p"].clone())
    }

    /// The second backend's share of `n` picks; each lease is held for `hold` further picks
    /// (0: dropped at once), as requests of a steady latency would be.
    fn share_of_second(pool: &Pool, n: usize, hold: usize) -> f64 {
        let second = pool.backends[1].clone();
        let mut held = std::collections::VecDeque::new();
        let mut hits = 0;
        for _ in 0..n {
            let l = pool.pick(&[]).expect("a backend");
            if Arc::ptr_eq(&l.backend, &second) {
                hits += 1;
            }
            held.push_back(l);
            while held.len() > hold {
                held.pop_front();
            }
        }
        hits as f64 / n as f64
    }

    /// What the share of a backend with this fraction of its weight is, beside one at full.
    fn ideal(f: f64) -> f64 {
        f / (1.0 + f)
    }

    async fn ramp_case(lb: &str, hold: usize, tolerance: f64) {
        let (registry, pool) = pool(lb);
        let stop = CancellationToken::new();
        let drain = Duration::from_secs(1);
        registry.set_draining("p", pool.backends[1].id.addr, true, drain);
        // Ticks at 0, 200 ms, 400 ms, … (paused time is exact).
        let task = tokio::spawn(run(registry.clone(), stop.clone()));
        tokio::time::sleep(TICK * 2 + TICK / 2).await;
        // Undrained between two ticks: it takes traffic at 10% of its weight at once.
        registry.set_draining("p", pool.backends[1].id.addr, false, drain);
        let s = share_of_second(&pool, 20_000, hold);
        assert!(
            (s - ideal(0.1)).abs() < tolerance,
            "{lb}: at once {s}, want {}",
            ideal(0.1)
        );
        // The next tick (600 ms) sees it up; from there it grows linearly over slow_start
        // (10 s). Each look is just after a tick that is 2.4 s further on.
        tokio::time::sleep(TICK / 2 + TICK / 4).await;
        for (at, f) in [(2.4, 0.316), (4.8, 0.532), (7.2, 0.748)] {
            tokio::time::sleep(Duration::from_millis(2400)).await;
            let s = share_of_second(&pool, 20_000, hold);
            assert!(
                (s - ideal(f)).abs() < tolerance,
                "{lb}: at {at}s {s}, want {}",
                ideal(f)
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = share_of_second(&pool, 20_000, hold);
        assert!(
            (s - 0.5).abs() < tolerance,
            "{lb}: after slow_start {s}, want 0.5"
        );
        assert_eq!(pool.backends[1].ramp_own(), RAMP_FULL);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_share_ramps_linearly_from_ten_percent() {
        ramp_case("round_robin", 0, 0.015).await;
    }

    /// Least request compares in-flight per unit of weight, so its share shows under load:
    /// every request is held for 200 further picks.
    #[tokio::test(start_paused = true)]
    async fn least_request_share_ramps_linearly_from_ten_percent() {
        ramp_case("least_request", 200, 0.02).await;
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_or_open_breaker_restarts_the_ramp_and_no_slow_start_is_full() {
        let (registry, pool) = pool("round_robin");
        let b = pool.backends[1].clone();
        let mut ramps = Ramps::default();
        let t0 = Instant::now();
        ramps.update(&registry.current(), t0);
        // Present from the first load: full weight.
        assert_eq!((b.ramp_own(), b.ramp()), (RAMP_FULL, RAMP_FULL));
        // Its breaker opens, then closes: it ramps from 10% again.
        b.breaker.set_threshold(1);
        assert!(
            b.breaker.record(false, false, &b.pool_shared),
            "the breaker opens"
        );
        ramps.update(&registry.current(), t0 + TICK);
        assert_eq!(b.ramp_own(), RAMP_FLOOR);
        b.breaker.force_close();
        ramps.update(&registry.current(), t0 + TICK * 2);
        assert_eq!(b.ramp(), RAMP_FLOOR);
        ramps.update(&registry.current(), t0 + TICK * 2 + Duration::from_secs(5));
        assert_eq!(b.ramp_own(), 550);
        assert_eq!(pool.backends[0].ramp(), RAMP_FULL);
    }
}
