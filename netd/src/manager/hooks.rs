//! When the network hook scripts ([`crate::hooks`]) run for networks and ports, and what
//! they are given: the network's XML as libvirt formats it for its hooks (the running
//! definition, its ports counted) and, for port operations, the port's.

use tracing::warn;

use super::{Error, Manager, Network, error_chain, ports::count_connections};
use crate::hooks::{self, Operation, hook_data};
use crate::xml::{Connections, NetworkDef, PortDef};

impl Manager {
    /// Runs the scripts for `operation` on network `def`, whose ports `connections` counts.
    pub(super) async fn run_hooks(
        &self,
        def: &NetworkDef,
        connections: &Connections,
        operation: Operation,
    ) -> Result<(), Error> {
        let scripts = self.hooks.scripts()?;
        if scripts.is_empty() {
            return Ok(());
        }
        let input = hook_data(&def.to_live_xml(connections), None);
        Ok(hooks::run(&scripts, &def.name, operation, &input).await?)
    }

    /// [`Manager::run_hooks`] where a failure changes nothing (libvirt ignores it too).
    pub(super) async fn run_hooks_logged(
        &self,
        def: &NetworkDef,
        connections: &Connections,
        operation: Operation,
    ) {
        if let Err(e) = self.run_hooks(def, connections, operation).await {
            warn!(network = %def.name, "{}", error_chain(&e));
        }
    }

    /// Runs the scripts after `net-update` changed `network`: given its running
    /// definition with its ports counted, or its persistent one if it is stopped.
    pub(super) async fn run_update_hooks(&self, network: &Network) -> Result<(), Error> {
        match (&network.live, &network.config) {
            (Some(live), _) => {
                self.run_hooks(live, &count_connections(network), Operation::Updated)
                    .await
            }
            (None, Some(config)) => {
                self.run_hooks(config, &Connections::default(), Operation::Updated)
                    .await
            }
            (None, None) => Ok(()),
        }
    }

    /// Runs the scripts for `operation` on `port` of network `name`, if the network runs
    /// (a stopped network's ports wait for its next start, and libvirt has none then).
    pub(super) async fn run_port_hooks(
        &self,
        name: &str,
        network: &Network,
        operation: Operation,
        port: &PortDef,
    ) -> Result<(), Error> {
        let Some(live) = &network.live else {
            return Ok(());
        };
        let scripts = self.hooks.scripts()?;
        if scripts.is_empty() {
            return Ok(());
        }
        let network_xml = live.to_live_xml(&count_connections(network));
        let input = hook_data(&network_xml, Some(&port.to_xml()));
        Ok(hooks::run(&scripts, name, operation, &input).await?)
    }

    /// [`Manager::run_port_hooks`] for each of `ports`, failures logged. Once a script has
    /// been killed for running too long, the other ports' scripts are not started: guests
    /// that end together must not hold the daemon's lock for a minute each.
    pub(super) async fn run_port_hooks_logged(
        &self,
        name: &str,
        network: &Network,
        operation: Operation,
        ports: &[PortDef],
    ) {
        for (done, port) in ports.iter().enumerate() {
            let Err(e) = self.run_port_hooks(name, network, operation, port).await else {
                continue;
            };
            let uuid = port.uuid.unwrap_or_default();
            warn!(network = %name, port = %uuid, "{}", error_chain(&e));
            if matches!(&e, Error::Hook(hook) if hook.is_timeout()) {
                let skipped = ports.len() - done - 1;
                if skipped > 0 {
                    warn!(network = %name, ports = skipped, "{} scripts not run for the other ports: one was killed for running too long", operation.as_str());
                }
                break;
            }
        }
    }
}
