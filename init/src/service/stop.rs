//! The order services stop in at shutdown: dependents first, independent
//! ones together.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// The order services stop in: a service stops only after every service
/// whose `dependsOn` names it (its dependents) has stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopPlan {
    /// Service -> the services that must have stopped before it stops.
    pub after: BTreeMap<String, BTreeSet<String>>,
    /// Service -> its step in the order: 1 with nothing to wait for, else
    /// one more than the latest step it waits for.
    pub step: BTreeMap<String, usize>,
    /// Services on a dependency cycle, or that one depends on: they wait
    /// for their other dependents but not for each other.
    pub cyclic: BTreeSet<String>,
}

/// Plans the stop order from every service's `dependsOn`. Names that are
/// not services (and a service naming itself) are ignored. `osk build`
/// rejects cycles; should one reach init anyway, its members stop in
/// parallel rather than wait for each other forever.
pub fn stop_plan(depends_on: &BTreeMap<String, Vec<String>>) -> StopPlan {
    let mut dependents: BTreeMap<String, BTreeSet<String>> = depends_on
        .keys()
        .map(|s| (s.clone(), BTreeSet::new()))
        .collect();
    for (svc, deps) in depends_on {
        for d in deps {
            if d != svc {
                if let Some(set) = dependents.get_mut(d) {
                    set.insert(svc.clone());
                }
            }
        }
    }
    // Peel off, step by step, the services none of whose dependents remain.
    let mut step = BTreeMap::new();
    let mut remaining: BTreeSet<String> = dependents.keys().cloned().collect();
    for n in 1.. {
        let ready: Vec<String> = remaining
            .iter()
            .filter(|s| dependents[*s].iter().all(|d| !remaining.contains(d)))
            .cloned()
            .collect();
        if ready.is_empty() {
            break;
        }
        for s in ready {
            remaining.remove(&s);
            step.insert(s, n);
        }
    }
    // What is left cannot be ordered: drop the edges inside it. A peeled
    // service never waits for a left one (its dependents were all peeled
    // before it), so this leaves no cycle.
    let cyclic = remaining;
    let after: BTreeMap<String, BTreeSet<String>> = dependents
        .into_iter()
        .map(|(s, deps)| {
            let keep = if cyclic.contains(&s) {
                deps.into_iter().filter(|d| !cyclic.contains(d)).collect()
            } else {
                deps
            };
            (s, keep)
        })
        .collect();
    for c in &cyclic {
        let n = after[c].iter().map(|d| step[d]).max().unwrap_or(0) + 1;
        step.insert(c.clone(), n);
    }
    StopPlan {
        after,
        step,
        cyclic,
    }
}

/// Runs `stop(name)` for every service of `plan`, each as soon as every
/// service it must follow has stopped, independent ones concurrently.
/// Logs each start and end with its step, so the order shows in init.log.
pub async fn stop_in_order<F, Fut>(plan: &StopPlan, stop: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stopped, _) = watch::channel(BTreeSet::<String>::new());
    let stopped = Arc::new(stopped);
    let last = plan.step.values().copied().max().unwrap_or(0);
    let mut all = JoinSet::new();
    for (name, after) in &plan.after {
        let (name, after, stop, stopped) =
            (name.clone(), after.clone(), stop.clone(), stopped.clone());
        let step = plan.step.get(&name).copied().unwrap_or(1);
        all.spawn(async move {
            let mut rx = stopped.subscribe();
            // The sender lives as long as this task: wait_for cannot fail.
            let _ = rx.wait_for(|s| after.is_subset(s)).await;
            let waited: Vec<&str> = after.iter().map(String::as_str).collect();
            if waited.is_empty() {
                tracing::info!("shutdown step {step}/{last}: stopping {name}");
            } else {
                tracing::info!(
                    "shutdown step {step}/{last}: stopping {name} (its dependents {} stopped)",
                    waited.join(", ")
                );
            }
            let began = Instant::now();
            stop(name.clone()).await;
            tracing::info!(
                "shutdown step {step}/{last}: {name} stopped in {:.1}s",
                began.elapsed().as_secs_f64()
            );
            stopped.send_modify(|s| {
                s.insert(name);
            });
        });
    }
    while all.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependents_stop_first_independent_ones_together() {
        // web depends on db, db on net; cron on nothing; ghost is no service.
        let plan = stop_plan(&deps(&[
            ("net", &[]),
            ("db", &["net"]),
            ("web", &["db", "ghost"]),
            ("cron", &[]),
        ]));
        assert_eq!(plan.after["web"], set(&[]));
        assert_eq!(plan.after["db"], set(&["web"]));
        assert_eq!(plan.after["net"], set(&["db"]));
        assert_eq!(plan.after["cron"], set(&[]));
        let steps: Vec<(&str, usize)> = plan.step.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        assert_eq!(steps, [("cron", 1), ("db", 2), ("net", 3), ("web", 1)]);
        assert!(plan.cyclic.is_empty());
    }

    #[test]
    fn a_diamond_waits_for_both_branches() {
        let plan = stop_plan(&deps(&[
            ("base", &[]),
            ("left", &["base"]),
            ("right", &["base"]),
            ("top", &["left", "right"]),
        ]));
        assert_eq!(plan.after["base"], set(&["left", "right"]));
        assert_eq!(plan.step["base"], 3);
        assert_eq!(plan.step["left"], plan.step["right"]);
    }

    #[test]
    fn a_cycle_stops_in_parallel_but_keeps_outside_edges() {
        // a <-> b is a cycle; c depends on a; b depends on z.
        let plan = stop_plan(&deps(&[
            ("a", &["b"]),
            ("b", &["a", "z"]),
            ("c", &["a"]),
            ("z", &[]),
            ("self", &["self"]),
        ]));
        assert_eq!(plan.cyclic, set(&["a", "b", "z"]));
        assert_eq!(plan.after["a"], set(&["c"]));
        assert_eq!(plan.after["b"], set(&[]));
        assert_eq!(plan.after["z"], set(&[]));
        assert_eq!(plan.after["self"], set(&[]));
        assert_eq!(plan.step["a"], 2);
    }

    /// Stops with fake durations; returns (name, began, ended) offsets.
    async fn run_fake(plan: &StopPlan, ms: u64) -> BTreeMap<String, (Duration, Duration)> {
        let t0 = Instant::now();
        let log = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let l = log.clone();
        stop_in_order(plan, move |name| {
            let l = l.clone();
            async move {
                let began = t0.elapsed();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                l.lock().unwrap().insert(name, (began, t0.elapsed()));
            }
        })
        .await;
        let out = log.lock().unwrap().clone();
        out
    }

    #[tokio::test]
    async fn stops_follow_the_plan_with_real_timings() {
        let plan = stop_plan(&deps(&[
            ("net", &[]),
            ("db", &["net"]),
            ("web", &["db"]),
            ("cron", &[]),
        ]));
        let t = run_fake(&plan, 100).await;
        assert_eq!(t.len(), 4);
        // Each service began only after its dependents had ended.
        assert!(t["db"].0 >= t["web"].1, "{t:?}");
        assert!(t["net"].0 >= t["db"].1, "{t:?}");
        // Independent ones ran at the same time.
        assert!(
            t["cron"].0 < t["web"].1 && t["web"].0 < t["cron"].1,
            "{t:?}"
        );
    }

    #[tokio::test]
    async fn a_cycle_does_not_hang_shutdown() {
        let plan = stop_plan(&deps(&[("a", &["b"]), ("b", &["a"])]));
        let t = tokio::time::timeout(Duration::from_secs(5), run_fake(&plan, 50))
            .await
            .expect("stopping a dependency cycle hung");
        assert_eq!(t.len(), 2);
        assert!(t["a"].0 < t["b"].1 && t["b"].0 < t["a"].1, "{t:?}");
    }
}
