//! Background upkeep: stale uploads expire, and the storage gauges are refreshed.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::server::state::Registry;

impl Registry {
    /// Removes uploads that received nothing for `upload_ttl`.
    pub async fn expire_uploads(&self) -> std::io::Result<usize> {
        let ttl = self.config.upload_ttl;
        let mut removed = 0;
        for (id, modified) in self.storage.upload_list().await? {
            if modified.elapsed().unwrap_or_default() > ttl {
                let session = self.lock_uploads().get(&id).cloned();
                if let Some(session) = session {
                    let _guard = session.lock().await;
                    self.discard_upload(&id).await;
                } else {
                    self.storage.upload_delete(&id).await?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rescans storage for the size gauges.
    pub async fn measure_storage(&self) -> std::io::Result<()> {
        let blobs = self.storage.blob_list().await?;
        self.metrics
            .storage_bytes
            .set(i64::try_from(blobs.iter().map(|b| b.size).sum::<u64>()).unwrap_or(i64::MAX));
        self.metrics
            .blobs
            .set(i64::try_from(blobs.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Background upkeep: expire stale uploads and refresh storage gauges, periodically.
    pub async fn run_upkeep(self: Arc<Self>) {
        let period =
            (self.config.upload_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            match self.expire_uploads().await {
                Ok(0) => {}
                Ok(n) => info!(uploads = n, "removed stale uploads"),
                Err(error) => warn!(%error, "cannot expire stale uploads"),
            }
            if let Err(error) = self.measure_storage().await {
                warn!(%error, "cannot measure registry storage");
            }
            tokio::time::sleep(period).await;
        }
    }
}
