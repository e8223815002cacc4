#!/usr/bin/env bash
# Renders manifests/hostgw.yaml from hostgw.yaml.in, inlining the one conflist
# (10-hostgw.conflist) and the network config (net-conf.json) into the ConfigMap, so the
# conflist exists once: the ConfigMap ships it, the image carries it, the tests load it.
#
#   manifests/render.sh            writes manifests/hostgw.yaml
#   manifests/render.sh -          prints it instead (the test compares the two)
#   IMAGE=reg/hostgw:1.2 manifests/render.sh   another image name
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${IMAGE:-registry.example.invalid/hostgw:0.1.0}

render() {
  # Each @FILE@ line becomes that file indented by four spaces (a YAML block scalar).
  awk -v image="$IMAGE" -v conflist="$HERE/10-hostgw.conflist" -v netconf="$HERE/net-conf.json" '
    function inline(path,   line) {
      while ((getline line < path) > 0) print "    " line
      close(path)
    }
    $0 == "@CONFLIST@" { inline(conflist); next }
    $0 == "@NET_CONF@" { inline(netconf); next }
    { gsub(/@IMAGE@/, image); print }
  ' "$HERE/hostgw.yaml.in"
}

if [ "${1:-}" = "-" ]; then
  render
else
  tmp=$(mktemp "$HERE/.hostgw.yaml.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  render >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$HERE/hostgw.yaml"
  echo "render: wrote $HERE/hostgw.yaml" >&2
fi
