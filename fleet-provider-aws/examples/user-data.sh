#!/bin/sh
# User data for fleet nodes on EC2: cloud-init runs it once, on an
# instance's first boot. The daemon fills in {{node}}, {{pool}},
# {{bootstrap_token}}, {{daemon_url}} and {{ca_pem}} per server.
#
# The AMI (or the AMI a pool snapshotted) must have the agent at
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

# Claimants reach the gateway on the public address (IMDSv2); an instance
# without one (private subnet) advertises its private address.
imds=http://169.254.169.254/latest
t=$(curl -fsS --retry 5 -X PUT "$imds/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
ip=$(curl -fsS -H "X-aws-ec2-metadata-token: $t" "$imds/meta-data/public-ipv4" \
  || curl -fsS -H "X-aws-ec2-metadata-token: $t" "$imds/meta-data/local-ipv4")

cat > /etc/fleet/agent.toml <<TOML
node_id = "{{node}}"
daemon_url = "{{daemon_url}}"
ca_file = "/etc/fleet/ca.pem"
bootstrap_token_file = "/etc/fleet/bootstrap.token"
identity_dir = "/var/lib/fleet/identity"
work_dir = "/var/lib/fleet/work"
gateway_listen = "0.0.0.0:7000"
gateway_advertise = "$ip:7000"
# Spot interruption notices come from the instance metadata service.
imds_url = "http://169.254.169.254"

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
