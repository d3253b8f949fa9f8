#!/bin/sh
# The rig demo (the README's first command): udrv lists the rig's devices, refuses the
# claims that would hurt the host, claims the test devices, drives them from user space
# through VFIO, and gives them back to their kernel drivers.

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; echo "(exit status $?)"; }

nic_of() { ls /sys/bus/pci/devices/$1/net 2>/dev/null | head -n 1; }

run udrv list

# Refusals: a group shared with LPC/SMBus, and a NIC the host is using.
run udrv attach 0000:00:1f.2
eth=$(nic_of 0000:00:02.0)
if [ -n "$eth" ]; then
  ip link set "$eth" up
  ip address add 192.168.77.1/24 dev "$eth"
  run udrv attach 0000:00:02.0
  ip address flush dev "$eth"
  ip link set "$eth" down
fi

run udrv attach 0000:00:02.0 0000:00:03.0 0000:00:05.0
run udrv list --vfio

# User-level drivers on the claimed devices.
command -v e1000 >/dev/null && run e1000 --tx 0000:00:02.0 --rx 0000:00:03.0 --frames 2000
command -v ide >/dev/null && run ide --device 0000:00:05.0 --sectors 2048 --verify-pattern

run udrv detach --all
run udrv list --class net
