#!/bin/sh
# The rig demo (the README's first command), run inside the rig guest:
#  1. udrv lists the rig's devices and refuses a claim that would hurt the host;
#  2. user-level drivers (examples/) drive claimed devices through VFIO;
#  3. `udrv serve` claims the e1000e and the ich9-ahci and serves them to a User-Mode
#     Linux guest, whose own e1000e and ahci drivers ping the rig kernel and read the
#     disk; SIGTERM gives every device back to its kernel driver.

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; echo "(exit status $?)"; }

nic_of() { ls /sys/bus/pci/devices/$1/net 2>/dev/null | head -n 1; }

run udrv list

# A refusal: 00:1f.2 shares its IOMMU group with LPC and SMBus, which the host uses.
run udrv attach 0000:00:1f.2

# User-level drivers on claimed devices.
run udrv attach 0000:00:05.0
command -v ide >/dev/null && run ide --device 0000:00:05.0 --sectors 2048 --verify-pattern
run udrv detach --all

# Linux on Linux. The rig kernel's end of the network: e1000 A, 10.0.0.1.
eth=$(nic_of 0000:00:02.0)
ip link set "$eth" up
ip address add 10.0.0.1/24 dev "$eth"
echo "rig: $eth (0000:00:02.0) is 10.0.0.1/24"

# UML's RAM on huge pages: QEMU 7.2's AHCI cannot read a command table that spans
# non-contiguous pages (see integration/src/tests/uml.rs).
mkdir -p /run/udrv-uml-mem
mount -t tmpfs -o huge=always,mode=1777 tmpfs /run/udrv-uml-mem

say "udrv serve &"
udrv serve 2> /tmp/udrv-serve.log &
serve=$!
i=0
until [ -S /run/udrv/control.sock ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done

run udrv attach 0000:00:04.0 --serve uml:/run/udrv/e1000e.sock
run udrv attach 0000:00:06.0 --serve uml:/run/udrv/ahci.sock
run udrv status

id=$(cat /rig/uml/virtio-pcidev-id)
say "linux mem=128M ... virtio_uml.device=/run/udrv/e1000e.sock:$id virtio_uml.device=/run/udrv/ahci.sock:$id"
TMPDIR=/run/udrv-uml-mem /rig/uml/linux mem=128M rootfstype=hostfs hostfs=/rig/uml/root rw \
  init=/init con=null con0=fd:0,fd:1 udrv_uml_task=tour e1000e.InterruptThrottleRate=0 \
  "virtio_uml.device=/run/udrv/e1000e.sock:$id" "virtio_uml.device=/run/udrv/ahci.sock:$id" \
  < /dev/null 2>&1 | grep -E '^uml: |e1000e .*eth0: |ahci .*: AHCI|ata[0-9]+\.00: [0-9]+ sectors'
echo "(UML exited)"

run udrv status

say "kill -TERM $serve    # udrv serve gives every device back"
kill -TERM "$serve"
wait "$serve"
echo "(udrv serve exit status $?)"
say "cat /tmp/udrv-serve.log"
cat /tmp/udrv-serve.log
run udrv list --class net
