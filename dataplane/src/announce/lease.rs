//! Per-Service leader election on a coordination.k8s.io/v1 Lease, as
//! client-go's `leaderelection` does it: take the Lease when it is absent,
//! released (no holder) or expired, renew it while holding it, write only
//! with the resourceVersion last read (so of two nodes writing at once one
//! fails), and judge expiry by how long ago *this* agent saw the record
//! change, never by comparing clocks between nodes.
//!
//! It owns the one Lease it is given by name and touches no other object.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// How long a Lease lasts and how it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long others wait, from when they last saw the Lease change,
    /// before they take it.
    pub lease_duration: Duration,
    /// The holder stops answering when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Between attempts to take or renew.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        }
    }
}

impl Timings {
    /// A holder must give up before anyone else may take over: the retry
    /// period below the renew deadline, the deadline below the duration,
    /// which is whole seconds on the Lease and so at least one.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err("the lease duration must be at least 1s".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err("the renew deadline must be shorter than the lease duration".into());
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err("the retry period must be above zero and below the renew deadline".into());
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written: whole seconds, rounded up.
    fn lease_seconds(&self) -> i32 {
        let whole =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(whole).unwrap_or(i32::MAX).max(1)
    }
}

/// What an attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This node holds the Lease (taken or renewed just now).
    Held,
    /// Another node holds it and it has not expired.
    HeldBy(String),
    /// Another writer got there first (a conflict): try again later.
    Contended,
}

/// The Lease record as last seen, and when this agent first saw it so.
#[derive(Debug, Clone)]
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// One Service's election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    observed: Option<Observed>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The label on every Lease the agent makes, to list them.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ferry-agent");

impl Elector {
    pub fn new(api: Api<Lease>, name: String, identity: String, timings: Timings) -> Self {
        Self {
            api,
            name,
            identity,
            timings,
            observed: None,
        }
    }

    pub fn lease_name(&self) -> &str {
        &self.name
    }

    /// What to write after reading `current` at `now`: `Err(holder)` when
    /// another holds it and, as far as this agent has seen, it has not
    /// expired. client-go's `tryAcquireOrRenew`, without the API calls.
    fn decide(
        &mut self,
        current: &LeaseSpec,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Result<LeaseSpec, String> {
        let seen = match &self.observed {
            Some(o) if o.spec == *current => o.at,
            _ => {
                self.observed = Some(Observed {
                    spec: current.clone(),
                    at: now,
                });
                now
            }
        };
        let holder = current.holder_identity.as_deref().unwrap_or_default();
        let ours = holder == self.identity;
        let lasts = current
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(self.timings.lease_duration, Duration::from_secs);
        if !holder.is_empty() && !ours && now.saturating_duration_since(seen) < lasts {
            return Err(holder.to_owned());
        }
        let mut next = current.clone();
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(self.timings.lease_seconds());
        next.renew_time = Some(MicroTime(wall));
        if !ours || next.acquire_time.is_none() {
            next.acquire_time = Some(MicroTime(wall));
        }
        if !ours {
            next.lease_transitions = Some(current.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        Ok(next)
    }

    fn observe(&mut self, lease: &Lease) {
        self.observed = Some(Observed {
            spec: lease.spec.clone().unwrap_or_default(),
            at: Instant::now(),
        });
    }

    /// One attempt to take or renew the Lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        let wall = jiff::Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.timings.lease_seconds()),
                    acquire_time: Some(MicroTime(wall)),
                    renew_time: Some(MicroTime(wall)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Outcome::Held)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    Ok(Outcome::Contended)
                }
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let next = match self.decide(&current, Instant::now(), wall) {
            Ok(next) => next,
            Err(holder) => return Ok(Outcome::HeldBy(holder)),
        };
        lease.spec = Some(next);
        // The resourceVersion read stays on the object: a write since fails.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Outcome::Held)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                Ok(Outcome::Contended)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this node holds it: no holder, so another
    /// node takes it at its next attempt instead of waiting for expiry.
    /// One try: on a conflict someone else has written it since.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elector(identity: &str) -> Elector {
        // Never called: `decide` is the client-free half.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Elector::new(
            Api::namespaced(client, "kube-system"),
            "ferry-l2.default.web".into(),
            identity.into(),
            Timings::default(),
        )
    }

    fn held_by(holder: Option<&str>, renew_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(5),
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_second(renew_secs).expect("ts"),
            )),
            acquire_time: Some(MicroTime(jiff::Timestamp::from_second(1).expect("ts"))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[tokio::test]
    async fn takes_a_lease_only_when_its_record_stood_still_for_its_duration() {
        let mut e = elector("node-b");
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(100).expect("ts");
        // Held by another: wait, however old its renewTime looks (clocks
        // are not compared).
        let a = held_by(Some("node-a"), 1);
        assert_eq!(e.decide(&a, t0, wall), Err("node-a".into()));
        assert_eq!(
            e.decide(&a, t0 + Duration::from_secs(4), wall),
            Err("node-a".into())
        );
        // Renewed: the wait starts again from when the change was seen.
        let renewed = held_by(Some("node-a"), 2);
        assert!(
            e.decide(&renewed, t0 + Duration::from_secs(4), wall)
                .is_err()
        );
        assert!(
            e.decide(&renewed, t0 + Duration::from_secs(8), wall)
                .is_err()
        );
        // Unchanged for its duration: expired, taken.
        let next = e
            .decide(&renewed, t0 + Duration::from_secs(9), wall)
            .expect("expired");
        assert_eq!(next.holder_identity.as_deref(), Some("node-b"));
        assert_eq!(next.lease_transitions, Some(4));
        assert_eq!(next.acquire_time, Some(MicroTime(wall)));
        assert_eq!(next.renew_time, Some(MicroTime(wall)));
        assert_eq!(next.lease_duration_seconds, Some(5));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_ours_is_renewed() {
        let mut e = elector("node-b");
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(100).expect("ts");
        let released = held_by(None, 2);
        assert!(e.decide(&released, t0, wall).is_ok());
        let empty = held_by(Some(""), 2);
        assert!(e.decide(&empty, t0, wall).is_ok());
        // Ours: renewed, keeping when it was acquired and the transitions.
        let ours = held_by(Some("node-b"), 2);
        let next = e.decide(&ours, t0, wall).expect("ours");
        assert_eq!(next.lease_transitions, Some(3));
        assert_eq!(
            next.acquire_time,
            Some(MicroTime(jiff::Timestamp::from_second(1).expect("ts")))
        );
        assert_eq!(next.renew_time, Some(MicroTime(wall)));
    }

    #[test]
    fn timings_leave_no_overlap() {
        assert!(Timings::default().validate().is_ok());
        let t = |d, r, p| Timings {
            lease_duration: Duration::from_millis(d),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        assert!(t(5000, 5000, 1000).validate().is_err());
        assert!(t(5000, 3000, 3000).validate().is_err());
        assert!(t(500, 300, 100).validate().is_err());
        assert!(t(3000, 2000, 500).validate().is_ok());
        assert_eq!(t(2500, 2000, 500).lease_seconds(), 3);
    }
}
