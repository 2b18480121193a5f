//! `<bandwidth>` of a network or a network port: libvirt's traffic limits
//! (`virNetDevBandwidthParse` and `virNetDevBandwidthFormat`, src/conf/netdev_bandwidth_conf.c).
//!
//! `floor` (a guaranteed minimum, for ports of a network that has an inbound limit) and
//! `classID` (the tc class libvirt gave such a port) are not implemented, and are refused
//! by name.

use serde::Serialize;

use super::dom::Element;
use super::format::Out;
use super::{Class, Error, invalid, invalid_as};

/// `<bandwidth>`: the limits in each direction, as seen from the guests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bandwidth {
    /// `<inbound>`: traffic to the guests.
    pub inbound: Option<Rate>,
    /// `<outbound>`: traffic from the guests.
    pub outbound: Option<Rate>,
}

/// `<inbound>` or `<outbound>`, in libvirt's units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// `average`: the sustained rate, kilobytes (1,000 bytes) per second; 0 is no limit.
    pub average: u64,
    /// `peak`: the rate the traffic may reach while it has burst left, kB/s.
    pub peak: Option<u64>,
    /// `burst`: kibibytes that may go at `peak` speed before `average` applies.
    pub burst: Option<u64>,
}

impl Rate {
    /// Whether the rate limits anything (libvirt ignores an `average` of 0).
    pub fn limits(&self) -> bool {
        self.average > 0
    }
}

impl Bandwidth {
    /// The inbound limit, if it limits anything.
    pub fn inbound_limit(&self) -> Option<&Rate> {
        self.inbound.as_ref().filter(|rate| rate.limits())
    }

    /// The outbound limit, if it limits anything.
    pub fn outbound_limit(&self) -> Option<&Rate> {
        self.outbound.as_ref().filter(|rate| rate.limits())
    }
}

/// Where a `<bandwidth>` appears, which decides the messages for what kvnet refuses.
pub(crate) enum Context<'a> {
    /// In `<network>` named so.
    Network(&'a str),
    /// In `<networkport>`.
    Port,
}

impl Context<'_> {
    fn unsupported(&self, what: String, line: u64) -> Error {
        match self {
            Context::Network(network) => Error::Unsupported {
                what,
                network: (*network).to_owned(),
                line,
            },
            Context::Port => Error::UnsupportedPort { what, line },
        }
    }
}

/// Which way a rate limits, as seen from the guests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

/// Reads the `<bandwidth>` element, if there is one; see [`parse`].
pub(crate) fn parse_optional(
    element: Option<&Element>,
    context: &Context<'_>,
) -> Result<Option<Bandwidth>, Error> {
    match element {
        Some(element) => parse(element, context),
        None => Ok(None),
    }
}

/// Reads a `<bandwidth>` element, with libvirt 9.0's messages and in its order
/// (`virNetDevBandwidthParse`: the children first, then inbound, then outbound). One with
/// neither `<inbound>` nor `<outbound>` is `None`, as libvirt drops it.
pub(crate) fn parse(element: &Element, context: &Context<'_>) -> Result<Option<Bandwidth>, Error> {
    if let Some((key, _)) = element.attrs.first() {
        return Err(match (key.as_str(), context) {
            ("classID", Context::Network(_)) => invalid_as(
                Class::XmlDetail,
                "classID attribute not supported on <bandwidth> in this usage context",
            ),
            _ => context.unsupported(format!("attribute '{key}' on <bandwidth>"), element.line),
        });
    }
    if !element.text.trim().is_empty() {
        return Err(invalid(format!(
            "unexpected text '{}' inside <bandwidth> (line {})",
            element.text.trim(),
            element.line
        )));
    }
    let (mut inbound, mut outbound) = (None, None);
    for child in &element.children {
        let slot = match child.name.as_str() {
            "inbound" => &mut inbound,
            "outbound" => &mut outbound,
            other => {
                return Err(context
                    .unsupported(format!("element <{other}> inside <bandwidth>"), child.line));
            }
        };
        if slot.is_some() {
            return Err(invalid_as(
                Class::XmlDetail,
                format!("Only one child <{}> element allowed", child.name),
            ));
        }
        *slot = Some(child);
    }
    if inbound.is_none() && outbound.is_none() {
        return Ok(None);
    }
    let rate = |element: Option<&Element>, direction| {
        element
            .map(|element| parse_rate(element, direction, context))
            .transpose()
    };
    Ok(Some(Bandwidth {
        inbound: rate(inbound, Direction::Inbound)?,
        outbound: rate(outbound, Direction::Outbound)?,
    }))
}

fn parse_rate(
    element: &Element,
    direction: Direction,
    context: &Context<'_>,
) -> Result<Rate, Error> {
    if let Some(child) = element.children.first() {
        return Err(context.unsupported(
            format!("element <{}> inside <{}>", child.name, element.name),
            child.line,
        ));
    }
    if let Some((key, _)) = element
        .attrs
        .iter()
        .find(|(key, _)| !["average", "peak", "burst", "floor"].contains(&key.as_str()))
    {
        return Err(context.unsupported(
            format!("attribute '{key}' on <{}>", element.name),
            element.line,
        ));
    }
    // In libvirt's order, which decides the message for a rate with several faults.
    let number = |attr: &str| {
        element
            .attr(attr)
            .map(|value| kilo_units(value, attr, &element.name))
            .transpose()
    };
    let average = number("average")?;
    let has = |attr: &str| element.attr(attr).is_some();
    if average.is_none() && !has("floor") {
        return Err(invalid_as(
            Class::XmlDetail,
            "Missing mandatory average or floor attributes",
        ));
    }
    if (has("peak") || has("burst")) && average.is_none() {
        return Err(invalid_as(
            Class::ConfigUnsupported,
            "'peak' and 'burst' require 'average' attribute",
        ));
    }
    let (peak, burst, floor) = (number("peak")?, number("burst")?, number("floor")?);
    // A floor of 0 guarantees nothing, and libvirt takes it as none.
    if floor.is_some_and(|floor| floor > 0) {
        return Err(match context {
            _ if direction == Direction::Outbound => invalid_as(
                Class::ConfigUnsupported,
                "'floor' attribute allowed only in <inbound> element",
            ),
            Context::Network(_) => invalid_as(
                Class::ConfigUnsupported,
                "floor attribute is not supported for this config",
            ),
            Context::Port => context.unsupported(
                format!("attribute 'floor' on <{}>", element.name),
                element.line,
            ),
        });
    }
    Ok(Rate {
        average: average.unwrap_or(0),
        peak,
        burst,
    })
}

/// A non-negative decimal, as libvirt 9.0 reads one (`virStrToLong_ullp`: leading
/// blanks are skipped, nothing may follow), small enough that it still fits 64 bits once
/// multiplied into bytes.
fn kilo_units(value: &str, attr: &str, element: &str) -> Result<u64, Error> {
    let number: u64 = value.trim_start().parse().map_err(|_| {
        invalid_as(
            Class::ConfigUnsupported,
            format!("could not convert bandwidth {attr} value '{value}'"),
        )
    })?;
    if number.checked_mul(1024).is_none() {
        return Err(invalid(format!(
            "bandwidth {attr} value '{value}' of <{element}> is too large: it must be below 2^54"
        )));
    }
    Ok(number)
}

/// Writes `<bandwidth>` as libvirt does: a direction with an `average` of 0 is left out,
/// and so are a `peak` or `burst` of 0.
pub(crate) fn format(out: &mut Out, bandwidth: &Bandwidth) {
    out.open("<bandwidth>");
    for (name, rate) in [
        ("inbound", &bandwidth.inbound),
        ("outbound", &bandwidth.outbound),
    ] {
        let Some(rate) = rate.filter(Rate::limits) else {
            continue;
        };
        let mut line = format!("<{name} average='{}'", rate.average);
        for (attr, value) in [("peak", rate.peak), ("burst", rate.burst)] {
            if let Some(value) = value.filter(|value| *value > 0) {
                line.push_str(&format!(" {attr}='{value}'"));
            }
        }
        line.push_str("/>");
        out.line(&line);
    }
    out.close("</bandwidth>");
}
