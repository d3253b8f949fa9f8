#!/bin/sh
# The rig demo (the README's first command), run inside the rig guest:
#  1. udrv lists the rig's devices and refuses a claim that would hurt the host;
#  2. user-level drivers (examples/) drive claimed devices through VFIO;
#  3. `udrv serve` claims the e1000e and the ich9-ahci and serves them to a User-Mode
#     Linux guest, whose own e1000e and ahci drivers ping the rig kernel and read the
#     disk; SIGTERM gives every device back to its kernel driver;
#  4. the seed's IDE controller passed through to a QEMU guest by udrv: `udrv serve`
#     serves the piix3-ide over vfio-user and a nested QEMU 11 guest's ata_piix reads
#     the disk through it; `udrv detach` gives the controller back.

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

# The seed's IDE controller passed through to a QEMU guest by udrv. QEMU's own vfio-pci
# cannot pass this legacy-mode piix3-ide (fixed ports, ISA IRQ 14); udrv shows it to the
# guest in native PCI mode and raises the interrupt it derives from the device's state.
ide=0000:00:05.0
sector=4097
rigdisk=/dev/$(basename "$(ls -d /sys/bus/pci/devices/$ide/ata*/host*/target*/*/block/* | head -n 1)")
echo "rig: $ide is class $(cat /sys/bus/pci/devices/$ide/class) (prog-if 0x80: legacy mode), its disk $rigdisk on ata_piix"
say "dd if=$rigdisk bs=512 skip=$sector count=1 | hexdump -C    # the rig's own ata_piix reads sector $sector"
dd if="$rigdisk" bs=512 skip=$sector count=1 2>/dev/null | hexdump -C | head -n 2

say "udrv serve &"
udrv serve 2> /tmp/udrv-serve-ide.log &
serve=$!
i=0
until [ -S /run/udrv/control.sock ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
run udrv attach $ide --serve vfio-user:/run/udrv/ide.sock

# The nested guest: QEMU 11 (vfio-user-pci) and the small kernel the rig tests use, a
# busybox initramfs whose task reports what its kernel found behind the served device.
g=/tmp/ide-guest
rm -rf $g; mkdir -p $g/root/bin
cp /bin/busybox $g/root/bin/busybox
cp /rig/qemu/init $g/root/init
cat > $g/root/task.sh <<TASK
#!/bin/sh
d=/sys/bus/pci/devices/0000:00:05.0
for i in \$(seq 1 300); do [ -b /dev/sda ] && break; sleep 0.2; done
echo "@@guest demo 00:05.0 is \$(cat \$d/vendor):\$(cat \$d/device) class \$(cat \$d/class), driver \$(basename "\$(readlink \$d/driver)")"
[ -b /dev/sda ] || exit 0
echo "@@guest demo /dev/sda: \$(cat /sys/block/sda/size) sectors, \$(echo \$(cat /sys/block/sda/device/model))"
echo "@@guest demo sector $sector of /dev/sda:"
dd if=/dev/sda bs=512 skip=$sector count=1 2>/dev/null | hexdump -C | head -n 2 | sed 's/^/@@guest demo   /'
t0=\$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/sda of=/dev/null bs=64k 2>/dev/null && r=ok || r=failed
t1=\$(cut -d' ' -f1 /proc/uptime)
echo "@@guest demo whole disk read (\$((\$(cat /sys/block/sda/size) / 2048)) MiB): \$r in \$(awk "BEGIN {printf \"%.1f\", \$t1 - \$t0}") s"
echo "@@guest demo interrupts: \$(grep ata_piix /proc/interrupts | tr -s ' ' | sed 's/^ //' | tr '\\n' ';' | sed 's/;\$//')"
TASK
chmod +x $g/root/init $g/root/task.sh
(cd $g/root && find . | cpio -o -H newc 2>/dev/null) > $g/initramfs.cpio

dev='{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/run/udrv/ide.sock"},"addr":"05.0"}'
say "qemu-system-x86_64 -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=256M,share=on -device '$dev' -kernel bzImage ...   # QEMU 11, TCG inside the rig: a minute or two"
UDRV_QEMU_SYSROOT=/rig/qemu/sysroot /bin/sh /rig/qemu/qemu11 -accel tcg -cpu max -smp 1 -m 256 \
  -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=256M,share=on \
  -nodefaults -no-reboot -display none -serial stdio \
  -kernel /rig/qemu/bzImage -initrd $g/initramfs.cpio \
  -append "console=ttyS0 panic=-1 no_timer_check" -device "$dev" < /dev/null 2>&1 \
  | tr -d '\r' | grep -E '@@guest demo |ata_piix|ata[0-9]+\.00: (ATA|[0-9]+ sectors|configured)|scsi .*Direct-Access' \
  | sed -e 's/.*@@guest demo /guest: /;t' -e 's/^/guest kernel: /'
echo "(QEMU exited)"
# udrv ends the session (device quiesced, memory unmapped) when it sees QEMU go.
i=0
until udrv status --json | grep -q '"client": null' || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done

run udrv status
say "udrv status --json | grep -E 'clients_served|region_|dma_maps|dma_unmaps|derived_intx'"
udrv status --json | grep -E '"(clients_served|region_reads|region_writes|dma_maps|dma_unmaps|derived_intx_signals)"'
run udrv detach $ide
kill -TERM "$serve"
wait "$serve"
echo "(udrv serve exit status $?)"
run udrv list --class storage
