# The README demo's guest (integration/guest/demo.sh boots it): what UML finds on its
# PCI bus, its e1000e pinging the rig kernel across QEMU's hub, and its AHCI disk
# holding the rig's sector pattern ("udrv", sector number, record, inverted number).
i=0
until [ -e /sys/class/net/eth0 ] && [ -b /dev/sda ] || [ $i -ge 50 ]; do
  sleep 0.1; i=$((i + 1))
done
echo "uml: PCI functions (served by udrv over virtio-pcidev):"
for d in /sys/bus/pci/devices/*; do
  echo "uml:   ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") driver=$(readlink "$d/driver" | sed 's,.*/,,')"
done
. /tasks/net.sh
eth=$(e1000e_interface) || { echo "uml: no e1000e interface"; exit 1; }
bring_up "$eth" 10.0.0.2/24
echo "uml: \$ ping -c 3 10.0.0.1      (the rig kernel's e1000 across the hub)"
ping -c 3 -W 2 10.0.0.1 | sed 's/^/uml: /'
echo "uml: \$ dd if=/dev/sda bs=512 skip=5 count=1 | hexdump -C | head -3"
dd if=/dev/sda bs=512 skip=5 count=1 2>/dev/null | hexdump -C | head -n 3 | sed 's/^/uml: /'
