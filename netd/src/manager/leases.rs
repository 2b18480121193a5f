//! `net-dhcp-leases`: a network's DHCP and DHCPv6 leases, running or not.

use crate::api::types::Lease;
use crate::dhcp::{self, DhcpServer};
use crate::dhcp6::{self, Dhcp6Server};

use super::configs::{dhcp_config, dhcp6_config};
use super::{Error, Manager, lookup};

impl Manager {
    /// The network's DHCP and DHCPv6 leases: those its servers hold while it runs, and
    /// while it does not, those its lease files recorded (libvirt lists them too).
    pub async fn leases(&self, key: &str) -> Result<Vec<Lease>, Error> {
        let networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let network = &networks[&name];
        let (v4, v6) = match (&network.live, &network.config) {
            (Some(_), _) => (
                network.dhcp.as_ref().map(DhcpServer::leases),
                network.dhcp6.as_ref().map(Dhcp6Server::leases),
            ),
            (None, Some(def)) => {
                let now = chrono::Utc::now().timestamp();
                let v4 = dhcp_config(def)
                    .map(|config| {
                        dhcp::leases::LeaseDb::read_leases(
                            &config,
                            &self.store.lease_path(&name),
                            now,
                        )
                    })
                    .transpose()
                    .map_err(|e| Error::Leases {
                        network: name.clone(),
                        source: Box::new(e),
                    })?;
                let v6 = dhcp6_config(def)
                    .map(|config| {
                        dhcp6::leases::LeaseDb::open(&config, &self.store.lease6_path(&name), now)
                            .map(|db| db.leases(now))
                    })
                    .transpose()
                    .map_err(|e| Error::Leases {
                        network: name.clone(),
                        source: Box::new(e),
                    })?;
                (v4, v6)
            }
            (None, None) => (None, None),
        };
        let Some(def) = network.current() else {
            return Ok(Vec::new());
        };
        // libvirt prints each lease with the prefix of the network's first <ip> of its family.
        let prefix_of = |ipv4: bool, default: u8| {
            def.ips
                .iter()
                .find(|ip| ip.is_ipv4() == ipv4)
                .and_then(|ip| ip.prefix_len())
                .unwrap_or(default)
        };
        let mut leases = Vec::new();
        let prefix = prefix_of(true, 32);
        leases.extend(v4.into_iter().flatten().map(|lease| Lease {
            expiry_time: lease.expiry_unix,
            mac: dhcp::format_mac(&lease.mac),
            ip_address: lease.ip.into(),
            prefix,
            hostname: lease.hostname,
            // virsh prints client identifiers colon-separated, like MACs.
            client_id: lease.client_id.as_deref().map(dhcp::format_mac),
        }));
        let prefix = prefix_of(false, 128);
        leases.extend(v6.into_iter().flatten().map(|lease| {
            Lease {
                expiry_time: lease.expiry_unix,
                // virsh prints a lease without a known MAC with "-".
                mac: lease
                    .mac
                    .map_or_else(|| "-".to_owned(), |mac| dhcp::format_mac(&mac)),
                ip_address: lease.ip.into(),
                prefix,
                hostname: lease.hostname,
                // dnsmasq hands libvirt the DUID in the same colon-separated hex.
                client_id: Some(dhcp::format_mac(&lease.duid)),
            }
        }));
        Ok(leases)
    }
}
