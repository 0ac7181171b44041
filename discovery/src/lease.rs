//! Leases: registrations owned by a remote process that must keep heartbeating.
//!
//! A plain registration is owned by this strait process (it vanishes when the process
//! stops or its ZooKeeper session expires). A process elsewhere on the host (an agent, a
//! `strait svc register --ttl`) registers under a lease instead and renews it; when it stops
//! renewing, the lease expires and its instances are deregistered. This works the same on
//! both backends because it sits above the [`Store`] trait.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::model::Instance;
use crate::store::{Store, StoreError};

pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

type InstanceKey = (String, String);

struct Lease {
    ttl: Duration,
    deadline: Instant,
    instances: BTreeSet<InstanceKey>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LeaseInfo {
    pub id: String,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub ttl: Duration,
    pub instances: Vec<String>,
}

/// A lease as a binary upgrade hands it to the new process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseHandover {
    pub id: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Time left before it expires.
    #[serde(with = "humantime_serde")]
    pub remaining: Duration,
    pub instances: Vec<(String, String)>,
}

#[derive(Default)]
struct Table {
    leases: HashMap<String, Lease>,
    /// Which lease owns each leased instance.
    owner: HashMap<InstanceKey, String>,
}

pub struct Leases {
    store: Arc<dyn Store>,
    table: Mutex<Table>,
    changed: Notify,
}

impl Leases {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Leases {
            store,
            table: Mutex::new(Table::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Critical sections are single map updates; a poisoned guard is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn grant(&self, ttl: Duration) -> Result<LeaseInfo, String> {
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(format!(
                "ttl {} is out of range: use {} to {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MIN_TTL),
                humantime::format_duration(MAX_TTL)
            ));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let lease = Lease {
            ttl,
            deadline: Instant::now() + ttl,
            instances: BTreeSet::new(),
        };
        let info = info_of(&id, &lease);
        self.lock().leases.insert(id, lease);
        self.changed.notify_one();
        Ok(info)
    }

    /// Extends a lease by its ttl. `None` when it does not exist (expired or revoked):
    /// the owner must grant a new one and register again.
    pub fn renew(&self, id: &str) -> Option<LeaseInfo> {
        let mut table = self.lock();
        let lease = table.leases.get_mut(id)?;
        lease.deadline = Instant::now() + lease.ttl;
        Some(info_of(id, lease))
    }

    pub fn get(&self, id: &str) -> Option<LeaseInfo> {
        self.lock().leases.get(id).map(|lease| info_of(id, lease))
    }

    /// Binary upgrade, old process: gives up every lease (nothing here expires or
    /// deregisters them any more) and returns them for the successor.
    pub fn hand_over(&self) -> Vec<LeaseHandover> {
        let table = std::mem::take(&mut *self.lock());
        let now = Instant::now();
        table
            .leases
            .into_iter()
            .map(|(id, lease)| LeaseHandover {
                id,
                ttl: lease.ttl,
                remaining: lease.deadline.saturating_duration_since(now),
                instances: lease.instances.into_iter().collect(),
            })
            .collect()
    }

    /// Binary upgrade, new process: takes over the predecessor's leases with their
    /// deadlines (at least `MIN_TTL` away, so an owner renewing during the hand-over
    /// is not cut off).
    pub fn adopt(&self, leases: Vec<LeaseHandover>) {
        let now = Instant::now();
        let mut table = self.lock();
        for lease in leases {
            for key in &lease.instances {
                table.owner.insert(key.clone(), lease.id.clone());
            }
            table.leases.insert(
                lease.id,
                Lease {
                    ttl: lease.ttl,
                    deadline: now + lease.remaining.max(MIN_TTL),
                    instances: lease.instances.into_iter().collect(),
                },
            );
        }
        drop(table);
        self.changed.notify_one();
    }

    /// Keeps instances whose deregistration failed owned by a short lease, so the reaper
    /// retries them (and nothing is left registered with no owner).
    fn keep_for_retry(&self, id: String, instances: BTreeSet<InstanceKey>) {
        let mut table = self.lock();
        for key in &instances {
            table.owner.insert(key.clone(), id.clone());
        }
        table.leases.insert(
            id,
            Lease {
                ttl: MIN_TTL,
                deadline: Instant::now() + MIN_TTL,
                instances,
            },
        );
        drop(table);
        self.changed.notify_one();
    }

    /// Ends a lease now, deregistering its instances. `Ok(false)` if there was none.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let lease = {
            let mut table = self.lock();
            let Some(lease) = table.leases.remove(id) else {
                return Ok(false);
            };
            for key in &lease.instances {
                table.owner.remove(key);
            }
            lease
        };
        if let Err(e) = self.deregister_all(id, lease.instances.clone()).await {
            self.keep_for_retry(id.to_string(), lease.instances);
            return Err(e);
        }
        Ok(true)
    }

    /// Registers `instance`, owned by lease `lease` if given, else by this process.
    pub async fn register(
        &self,
        instance: Instance,
        lease: Option<&str>,
    ) -> Result<(), StoreError> {
        let lease_missing = || StoreError::NotFound {
            kind: "lease",
            name: lease.unwrap_or_default().to_string(),
        };
        if let Some(id) = lease {
            let known = self.lock().leases.contains_key(id);
            if !known {
                return Err(lease_missing());
            }
        }
        let key = (instance.service.clone(), instance.id.clone());
        self.store.register(instance).await?;
        let attached = {
            let mut table = self.lock();
            if let Some(previous) = table.owner.remove(&key)
                && let Some(lease) = table.leases.get_mut(&previous)
            {
                lease.instances.remove(&key);
            }
            match lease {
                None => true,
                Some(id) => match table.leases.get_mut(id) {
                    Some(lease) => {
                        lease.instances.insert(key.clone());
                        table.owner.insert(key.clone(), id.to_string());
                        true
                    }
                    None => false,
                },
            }
        };
        if !attached {
            // The lease expired between the check and the write: do not leave it unowned.
            self.store.deregister(&key.0, &key.1).await?;
            return Err(lease_missing());
        }
        Ok(())
    }

    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let removed = self.store.deregister(service, id).await?;
        let key = (service.to_string(), id.to_string());
        let mut table = self.lock();
        if let Some(lease_id) = table.owner.remove(&key)
            && let Some(lease) = table.leases.get_mut(&lease_id)
        {
            lease.instances.remove(&key);
        }
        Ok(removed)
    }

    async fn deregister_all(
        &self,
        lease: &str,
        instances: BTreeSet<InstanceKey>,
    ) -> Result<(), StoreError> {
        let mut first_error = None;
        for (service, id) in instances {
            if let Err(e) = self.store.deregister(&service, &id).await {
                warn!(lease, service, id, error = %e, "cannot deregister leased instance");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Expires leases whose owners stopped renewing. Runs until the process stops.
    pub async fn run_reaper(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let (expired, next_deadline) = {
                let mut table = self.lock();
                let expired: Vec<String> = table
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                let mut leases = Vec::new();
                for id in expired {
                    if let Some(lease) = table.leases.remove(&id) {
                        for key in &lease.instances {
                            table.owner.remove(key);
                        }
                        leases.push((id, lease.instances));
                    }
                }
                (leases, table.leases.values().map(|l| l.deadline).min())
            };
            let mut retry_soon = false;
            for (id, instances) in expired {
                info!(lease = %id, instances = instances.len(), "lease expired; deregistering its instances");
                if let Err(e) = self.deregister_all(&id, instances.clone()).await {
                    warn!(lease = %id, error = %e, "will retry deregistering expired lease");
                    self.keep_for_retry(id, instances);
                    retry_soon = true;
                }
            }
            let mut sleep = next_deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if retry_soon {
                sleep = sleep.min(MIN_TTL);
            }
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

fn info_of(id: &str, lease: &Lease) -> LeaseInfo {
    LeaseInfo {
        id: id.to_string(),
        ttl: lease.ttl,
        instances: lease
            .instances
            .iter()
            .map(|(service, id)| format!("{service}/{id}"))
            .collect(),
    }
}
