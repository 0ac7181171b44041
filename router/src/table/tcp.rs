//! TCP routes in the table: per listen address, the targets chosen by exact server name
//! (SNI), by `*.suffix`, and the default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use discovery::Route;
use tracing::warn;

use super::route::Targets;
use crate::config::RouterConfig;

/// The TCP routes of one listen address.
#[derive(Debug, Default)]
pub struct TcpListenerRoutes {
    /// By exact SNI name.
    pub by_sni: HashMap<Box<str>, TcpTarget>,
    /// By `*.suffix` SNI (key: `.suffix`).
    pub by_sni_suffix: HashMap<Box<str>, TcpTarget>,
    /// Connections without SNI routing, or whose SNI matches nothing.
    pub default: Option<TcpTarget>,
}

#[derive(Debug)]
pub struct TcpTarget {
    pub route: Arc<str>,
    pub targets: Targets,
    pub connect_timeout: Duration,
    /// The route's `timeouts.idle`: a connection with no byte moving either way for
    /// that long is closed. None: no limit.
    pub idle_timeout: Option<Duration>,
}

impl TcpListenerRoutes {
    /// Whether a route of this address is chosen by server name (the ClientHello is read).
    pub fn needs_sni(&self) -> bool {
        !self.by_sni.is_empty() || !self.by_sni_suffix.is_empty()
    }

    /// The target for a connection with this server name: exact, then the longest
    /// `*.suffix`, then the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&TcpTarget> {
        if let Some(name) = sni {
            if let Some(target) = self.by_sni.get(name) {
                return Some(target);
            }
            let mut rest = name;
            let mut offset = 0;
            while let Some(dot) = rest.find('.') {
                if let Some(target) = self.by_sni_suffix.get(&name[offset + dot..]) {
                    return Some(target);
                }
                offset += dot + 1;
                rest = &name[offset..];
            }
        }
        self.default.as_ref()
    }

    /// Adds TCP route `name`. A second route for one server name (or a second default)
    /// is refused with a warning: the first stays.
    pub(super) fn add(
        &mut self,
        name: &Arc<str>,
        route: &Route,
        pools: &super::route::TablePools,
        config: &RouterConfig,
    ) {
        let target = TcpTarget {
            route: Arc::clone(name),
            targets: Targets::of(route, pools),
            connect_timeout: route.timeouts.connect.unwrap_or(config.connect_timeout),
            idle_timeout: route.timeouts.idle,
        };
        let slot = match route.sni.as_deref() {
            None => &mut self.default,
            Some(sni) => {
                let map = if let Some(suffix) = sni.strip_prefix('*') {
                    self.by_sni_suffix.entry(suffix.into())
                } else {
                    self.by_sni.entry(sni.into())
                };
                match map {
                    std::collections::hash_map::Entry::Occupied(existing) => {
                        warn!(route = %name, other = %existing.get().route, "two TCP routes for one listen address and server name; keeping the first");
                        return;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(target);
                        return;
                    }
                }
            }
        };
        match slot {
            Some(existing) => {
                warn!(route = %name, other = %existing.route, "two default TCP routes for one listen address; keeping the first");
            }
            None => *slot = Some(target),
        }
    }
}
