#!/bin/sh
# User data for fleet nodes on Hetzner Cloud: cloud-init runs it once, on a
# server's first boot. The daemon fills in {{node}}, {{pool}},
# {{bootstrap_token}}, {{daemon_url}} and {{ca_pem}} per server.
#
# The image (or the snapshot a pool boots from) must have the agent at
# /usr/local/bin/fleet-agent. Point [provider] user_data at this file.
set -eu

install -d -m 0755 /etc/fleet
install -d -m 0700 /var/lib/fleet
# A snapshot carries the identity of the node it was taken from: drop it,
# this server joins as {{node}} with its own single-use token.
rm -rf /var/lib/fleet/identity /var/lib/fleet/work

cat > /etc/fleet/ca.pem <<'PEM'
{{ca_pem}}
PEM

umask 077
printf '%s' '{{bootstrap_token}}' > /etc/fleet/bootstrap.token
umask 022

# Claimants reach the gateway on the public address.
ip=$(curl -fsS --retry 5 http://169.254.169.254/hetzner/v1/metadata/public-ipv4)

cat > /etc/fleet/agent.toml <<TOML
node_id = "{{node}}"
daemon_url = "{{daemon_url}}"
ca_file = "/etc/fleet/ca.pem"
bootstrap_token_file = "/etc/fleet/bootstrap.token"
identity_dir = "/var/lib/fleet/identity"
work_dir = "/var/lib/fleet/work"
gateway_listen = "0.0.0.0:7000"
gateway_advertise = "$ip:7000"

[labels]
pool = "{{pool}}"
TOML

cat > /etc/systemd/system/fleet-agent.service <<'UNIT'
[Unit]
Description=fleet agent
After=network-online.target
Wants=network-online.target

[Service]
Environment=FLEET_AGENT_CONFIG=/etc/fleet/agent.toml
ExecStart=/usr/local/bin/fleet-agent
# SIGTERM drains: in-flight commands get their drain timeout.
KillSignal=SIGTERM
TimeoutStopSec=120
Restart=always
RestartSec=2
# Exit 3: the daemon refused this node for good (its bootstrap token is
# spent or unknown); restarting with the same files cannot help.
RestartPreventExitStatus=3

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now fleet-agent.service
