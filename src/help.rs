//! virsh's `help`: the list of commands by group, one group's, and one command's NAME,
//! SYNOPSIS, DESCRIPTION and OPTIONS, laid out byte for byte as virsh 9.0 lays them
//! out, with virsh's own words for what kvnet shares with it.

/// How virsh reads an option, which decides how its help spells it.
#[derive(Clone, Copy)]
enum Kind {
    /// A flag: `[--inactive]`.
    Flag,
    /// An option with a value of this type: `[--mac <string>]`.
    Value(&'static str),
    /// A required argument, given by position or by name: `<network>`.
    Required,
    /// Any number of words: `[<string>]...`.
    Words,
}

/// One option of a command.
struct Opt {
    name: &'static str,
    kind: Kind,
    text: &'static str,
}

const fn flag(name: &'static str, text: &'static str) -> Opt {
    Opt {
        name,
        kind: Kind::Flag,
        text,
    }
}

const fn string(name: &'static str, text: &'static str) -> Opt {
    Opt {
        name,
        kind: Kind::Value("string"),
        text,
    }
}

const fn number(name: &'static str, text: &'static str) -> Opt {
    Opt {
        name,
        kind: Kind::Value("number"),
        text,
    }
}

const fn required(name: &'static str, text: &'static str) -> Opt {
    Opt {
        name,
        kind: Kind::Required,
        text,
    }
}

/// One command: virsh's summary (its line in the group lists), description (none for
/// some) and options, in virsh's order; kvnet's own options (`--json`) come last.
struct Verb {
    name: &'static str,
    summary: &'static str,
    description: &'static str,
    options: &'static [Opt],
}

const NETWORK: Opt = required("network", "network name or uuid");
const JSON: Opt = flag("json", "print JSON instead");
// Not virsh's words ("validate the XML against the schema"): kvnetd checks what it
// takes, with libvirt's parser's rules, but has no RelaxNG schema to check against.
const VALIDATE: Opt = flag(
    "validate",
    "accepted as in virsh; kvnetd checks every definition, not against libvirt's schema",
);
const XPATH: Opt = string("xpath", "xpath expression to filter the XML document");
const WRAP: Opt = flag("wrap", "wrap xpath results in an common root element");
const PORT: Opt = required("port", "port UUID");

/// Every command kvnet has, with virsh 9.0's words.
const VERBS: &[Verb] = &[
    Verb {
        name: "net-autostart",
        summary: "autostart a network",
        description: "Configure a network to be automatically started at boot.",
        options: &[NETWORK, flag("disable", "disable autostarting")],
    },
    Verb {
        name: "net-create",
        summary: "create a network from an XML file",
        description: "Create a network.",
        options: &[
            required("file", "file containing an XML network description"),
            VALIDATE,
        ],
    },
    Verb {
        name: "net-define",
        summary: "define an inactive persistent virtual network or modify an existing \
                  persistent one from an XML file",
        description: "Define or modify a persistent virtual network.",
        options: &[
            required("file", "file containing an XML network description"),
            VALIDATE,
        ],
    },
    Verb {
        name: "net-destroy",
        summary: "destroy (stop) a network",
        description: "Forcefully stop a given network.",
        options: &[NETWORK],
    },
    Verb {
        name: "net-dhcp-leases",
        summary: "print lease info for a given network",
        description: "Print lease info for a given network",
        options: &[NETWORK, string("mac", "MAC address"), JSON],
    },
    Verb {
        name: "net-dumpxml",
        summary: "network information in XML",
        description: "Output the network information as an XML dump to stdout.",
        options: &[
            NETWORK,
            flag("inactive", "show inactive defined XML"),
            XPATH,
            WRAP,
            flag("json", "print JSON ({\"xml\": ...}) instead"),
        ],
    },
    Verb {
        name: "net-edit",
        summary: "edit XML configuration for a network",
        description: "Edit the XML configuration for a network.",
        options: &[NETWORK],
    },
    Verb {
        name: "net-event",
        summary: "Network Events",
        description: "List event types, or wait for network events to occur",
        options: &[
            string("network", "filter by network name or uuid"),
            string("event", "which event type to wait for"),
            flag(
                "loop",
                "loop until timeout or interrupt, rather than one-shot",
            ),
            number("timeout", "timeout seconds"),
            flag("list", "list valid event types"),
            flag("timestamp", "show timestamp for each printed event"),
            flag("json", "print one JSON object per event instead"),
        ],
    },
    Verb {
        name: "net-info",
        summary: "network information",
        description: "Returns basic information about the network",
        options: &[NETWORK, JSON],
    },
    Verb {
        name: "net-list",
        summary: "list networks",
        description: "Returns list of networks.",
        options: &[
            flag("inactive", "list inactive networks"),
            flag("all", "list inactive & active networks"),
            flag("persistent", "list persistent networks"),
            flag("transient", "list transient networks"),
            flag("autostart", "list networks with autostart enabled"),
            flag("no-autostart", "list networks with autostart disabled"),
            flag("uuid", "list uuid's only"),
            flag("name", "list network names only"),
            flag("table", "list table (default)"),
            // libvirt 10's.
            flag("title", "show network title"),
            JSON,
        ],
    },
    Verb {
        name: "net-name",
        summary: "convert a network UUID to network name",
        description: "",
        options: &[required("network", "network uuid"), JSON],
    },
    Verb {
        name: "net-start",
        summary: "start a (previously defined) inactive network",
        description: "Start a network.",
        options: &[NETWORK],
    },
    Verb {
        name: "net-undefine",
        summary: "undefine a persistent network",
        description: "Undefine the configuration for a persistent network.",
        options: &[NETWORK],
    },
    Verb {
        name: "net-update",
        summary: "update parts of an existing network's configuration",
        description: "",
        options: &[
            NETWORK,
            required(
                "command",
                "type of update (add-first, add-last (add), delete, or modify)",
            ),
            required(
                "section",
                "which section of network configuration to update",
            ),
            required(
                "xml",
                "name of file containing xml (or, if it starts with '<', the complete xml \
                 element itself) to add/modify, or to be matched for search",
            ),
            number("parent-index", "which parent object to search through"),
            flag("config", "affect next network startup"),
            flag("live", "affect running network"),
            flag("current", "affect current state of network"),
        ],
    },
    Verb {
        name: "net-uuid",
        summary: "convert a network name to network UUID",
        description: "",
        options: &[required("network", "network name"), JSON],
    },
    Verb {
        name: "net-port-list",
        summary: "list network ports",
        description: "Returns list of network ports.",
        options: &[
            NETWORK,
            flag("uuid", "list uuid's only"),
            flag("table", "list table (default)"),
            JSON,
        ],
    },
    Verb {
        name: "net-port-create",
        summary: "create a network port from an XML file",
        description: "Create a network port.",
        options: &[
            NETWORK,
            required("file", "file containing an XML network port description"),
            VALIDATE,
        ],
    },
    Verb {
        name: "net-port-dumpxml",
        summary: "network port information in XML",
        description: "Output the network port information as an XML dump to stdout.",
        options: &[
            NETWORK,
            PORT,
            XPATH,
            WRAP,
            flag("json", "print JSON ({\"xml\": ...}) instead"),
        ],
    },
    Verb {
        name: "net-port-delete",
        summary: "delete the specified network port",
        description: "Delete the specified network port.",
        options: &[NETWORK, PORT],
    },
    Verb {
        name: "uri",
        summary: "print the hypervisor canonical URI",
        description: "",
        options: &[flag(
            "json",
            "print JSON (with the daemon's version) instead",
        )],
    },
    Verb {
        name: "cd",
        summary: "change the current directory",
        description: "Change the current directory.",
        options: &[string(
            "dir",
            "directory to switch to (default: home or else root)",
        )],
    },
    Verb {
        name: "echo",
        summary: "echo arguments. Used for internal testing.",
        description: "Echo back arguments, possibly with quoting. Used for internal testing.",
        options: &[
            flag("shell", "escape for shell use"),
            flag("xml", "escape for XML use"),
            flag(
                "split",
                "split each argument on ','; ',,' is an escape sequence",
            ),
            flag("err", "output to stderr"),
            Opt {
                name: "string",
                kind: Kind::Words,
                text: "arguments to echo",
            },
        ],
    },
    Verb {
        name: "exit",
        summary: "quit this interactive terminal",
        description: "",
        options: &[],
    },
    Verb {
        name: "help",
        summary: "print help",
        description: "Prints global help, command specific help, or help for a\n\
                      group of related commands",
        options: &[string(
            "command",
            "Prints global help, command specific help, or help for a group of related \
             commands",
        )],
    },
    Verb {
        name: "pwd",
        summary: "print the current directory",
        description: "Print the current directory.",
        options: &[],
    },
    Verb {
        name: "quit",
        summary: "quit this interactive terminal",
        description: "",
        options: &[],
    },
];

/// A group of commands, as virsh lists them: its keyword, its name, its commands (those
/// of virsh's that kvnet has) in virsh's order.
struct Group {
    keyword: &'static str,
    name: &'static str,
    verbs: &'static [&'static str],
}

/// virsh's groups that hold kvnet's commands, in virsh's order.
const GROUPS: &[Group] = &[
    Group {
        keyword: "host",
        name: "Host and Hypervisor",
        verbs: &["uri"],
    },
    Group {
        keyword: "network",
        name: "Networking",
        verbs: &[
            "net-autostart",
            "net-create",
            "net-define",
            "net-destroy",
            "net-dhcp-leases",
            "net-dumpxml",
            "net-edit",
            "net-event",
            "net-info",
            "net-list",
            "net-name",
            "net-start",
            "net-undefine",
            "net-update",
            "net-uuid",
            "net-port-list",
            "net-port-create",
            "net-port-dumpxml",
            "net-port-delete",
        ],
    },
    Group {
        keyword: "virsh",
        name: "Virsh itself",
        verbs: &["cd", "echo", "exit", "help", "pwd", "quit"],
    },
];

/// What `help TOPIC` prints (without `help` alone: every group): a command's help, else
/// a group's list (by keyword or name, as virsh matches them); `Err` with virsh's reason
/// for a topic that names neither. The blank line virsh ends it with under no `-q` is
/// left to the caller.
pub fn topic(topic: Option<&str>) -> Result<String, String> {
    let Some(topic) = topic.filter(|topic| !topic.is_empty()) else {
        let mut text = String::from("Grouped commands:\n\n");
        for group in GROUPS {
            text.push_str(&group_list(group));
            text.push('\n');
        }
        return Ok(text);
    };
    if let Some(verb) = VERBS.iter().find(|verb| verb.name == topic) {
        return Ok(verb_help(verb));
    }
    GROUPS
        .iter()
        .find(|group| group.keyword == topic || group.name == topic)
        .map(group_list)
        .ok_or_else(|| format!("command or command group '{topic}' doesn't exist"))
}

/// A group's heading and its commands' summaries.
fn group_list(group: &Group) -> String {
    let mut text = format!(" {} (help keyword '{}'):\n", group.name, group.keyword);
    for name in group.verbs {
        let summary = VERBS
            .iter()
            .find(|verb| verb.name == *name)
            .map_or("", |verb| verb.summary);
        text.push_str(&format!("    {name:<30} {summary}\n"));
    }
    text
}

/// One command's help, in virsh's sections.
fn verb_help(verb: &Verb) -> String {
    let mut text = format!("  NAME\n    {} - {}\n", verb.name, verb.summary);
    text.push_str(&format!("\n  SYNOPSIS\n    {}", verb.name));
    for option in verb.options {
        let name = option.name;
        match option.kind {
            Kind::Flag => text.push_str(&format!(" [--{name}]")),
            Kind::Value(kind) => text.push_str(&format!(" [--{name} <{kind}>]")),
            Kind::Required => text.push_str(&format!(" <{name}>")),
            Kind::Words => text.push_str(&format!(" [<{name}>]...")),
        }
    }
    text.push('\n');
    if !verb.description.is_empty() {
        text.push_str("\n  DESCRIPTION\n");
        for line in verb.description.lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    if !verb.options.is_empty() {
        text.push_str("\n  OPTIONS\n");
        for option in verb.options {
            let name = option.name;
            let spelled = match option.kind {
                Kind::Flag => format!("--{name}"),
                Kind::Value(kind) => format!("--{name} <{kind}>"),
                Kind::Required => format!("[--{name}] <string>"),
                Kind::Words => format!("<{name}>"),
            };
            text.push_str(&format!("    {spelled:<15}  {}\n", option.text));
        }
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_command_has_virsh_help_naming_exactly_its_options() {
        let cli = crate::cli::Cli::command();
        let global: BTreeSet<&str> = cli
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .chain(["help"])
            .collect();
        let mut commands = 0;
        for command in cli.get_subcommands() {
            let name = command.get_name();
            let verb = VERBS
                .iter()
                .find(|verb| verb.name == name)
                .unwrap_or_else(|| panic!("no help for {name}"));
            let clap_options: BTreeSet<&str> = command
                .get_arguments()
                .filter_map(|arg| arg.get_long())
                .filter(|long| !global.contains(long))
                .collect();
            let help_options: BTreeSet<&str> = verb.options.iter().map(|o| o.name).collect();
            assert_eq!(clap_options, help_options, "{name}");
            commands += 1;
        }
        // Those the command string handles itself.
        assert_eq!(commands + ["exit", "quit"].len(), VERBS.len());
        for group in GROUPS {
            for name in group.verbs {
                assert!(VERBS.iter().any(|verb| verb.name == *name), "{name}");
            }
        }
    }

    #[test]
    fn a_command_is_laid_out_as_virsh_lays_it_out() {
        // virsh 9.0's `help net-dhcp-leases`, with kvnet's `--json` last.
        assert_eq!(
            topic(Some("net-dhcp-leases")).as_deref(),
            Ok(
                "  NAME\n    net-dhcp-leases - print lease info for a given network\n\
                \n  SYNOPSIS\n    net-dhcp-leases <network> [--mac <string>] [--json]\n\
                \n  DESCRIPTION\n    Print lease info for a given network\n\
                \n  OPTIONS\n    [--network] <string>  network name or uuid\n\
                \x20   --mac <string>   MAC address\n\
                \x20   --json           print JSON instead\n\n"
            )
        );
        assert_eq!(
            topic(Some("quit")).as_deref(),
            Ok("  NAME\n    quit - quit this interactive terminal\n\n  SYNOPSIS\n    quit\n\n")
        );
        assert_eq!(
            topic(Some("net-inf")),
            Err("command or command group 'net-inf' doesn't exist".to_owned())
        );
    }
}
