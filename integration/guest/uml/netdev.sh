# Prints one line per network interface that sits on a PCI device:
#   uml: netdev NAME driver=D pci=BDF vendor=0xVVVV device=0xDDDD mac=MAC
# Built-in drivers probe before init runs; the short wait covers a late registration.
i=0
while [ $i -lt 50 ]; do
  for n in /sys/class/net/*; do [ -e "$n/device" ] && break 2; done
  sleep 0.1
  i=$((i + 1))
done
for n in /sys/class/net/*; do
  [ -e "$n/device" ] || continue
  driver=$(readlink "$n/device/driver")
  pci=$(readlink "$n/device")
  echo "uml: netdev ${n##*/} driver=${driver##*/} pci=${pci##*/} vendor=$(cat "$n/device/vendor") device=$(cat "$n/device/device") mac=$(cat "$n/address")"
done
