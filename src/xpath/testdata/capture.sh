#!/bin/bash
# Captures what virsh 9.0 prints for `net-dumpxml --xpath`, the reference the unit
# tests in src/xpath/tests.rs compare kvnet with. It uses libvirt's built-in test
# driver (no daemon), whose node is node.xml:
#
#   virsh -c test:///ABS/node.xml net-dumpxml NETWORK --xpath EXPR [--wrap]
#
# Run from anywhere; rewrites the *.xml and virsh-*.txt files beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
uri="test://$here/node.xml"

# The XML each network's net-dumpxml prints: the document kvnet searches.
virsh -c "$uri" net-dumpxml default >"$here/default.xml"
virsh -c "$uri" net-dumpxml "tëst&<>\"'" >"$here/nonascii.xml"

capture() { # NETWORK EXPRESSIONS OUTPUT [--wrap]
    local out=$3 stdout stderr status
    : >"$out"
    stdout=$(mktemp) stderr=$(mktemp)
    while IFS= read -r expr; do
        status=0
        virsh -c "$uri" net-dumpxml "$1" --xpath "$expr" ${4:-} >"$stdout" 2>"$stderr" || status=$?
        { printf '=== [%s]\nrc=%s\n--stdout:\n' "$expr" "$status"; cat "$stdout"
          printf -- '--stderr:\n'; cat "$stderr"; } >>"$out"
    done <"$2"
    rm -f "$stdout" "$stderr"
}
capture default "$here/exprs-default.txt" "$here/virsh-default.txt"
capture default "$here/exprs-default.txt" "$here/virsh-default-wrap.txt" --wrap
capture "tëst&<>\"'" "$here/exprs-nonascii.txt" "$here/virsh-nonascii.txt"
capture "tëst&<>\"'" "$here/exprs-nonascii.txt" "$here/virsh-nonascii-wrap.txt" --wrap
