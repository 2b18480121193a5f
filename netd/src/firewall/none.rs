//! The no-op backend, for hosts or builds where kvnet must not touch the firewall.

use super::{Error, Firewall, Inspection, NetworkRules};

/// Accepts every change and does nothing.
#[derive(Debug)]
pub(super) struct NoFirewall;

impl Firewall for NoFirewall {
    fn apply(&self, rules: &NetworkRules) -> Result<(), Error> {
        tracing::debug!(bridge = %rules.bridge, "firewall disabled: no rules applied");
        Ok(())
    }

    fn remove(&self, _bridge: &str) -> Result<(), Error> {
        Ok(())
    }

    fn bridges(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    fn inspect(&self, _expected: &[String]) -> Result<Inspection, Error> {
        Ok(Inspection::default())
    }

    fn foreign_drop_policies(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}
