//! The only module that speaks netlink: bridges, addresses, links, routes; plus sysctls.
