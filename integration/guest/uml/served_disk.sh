# The ich9-ahci served by udrv in UML: finds the 16 MiB patterned disk (32768
# sectors), copies it whole to /tmp/udrv-disk.img (this root is the rig's
# /rig/uml/root over hostfs; the rig checks the pattern there), then, if the rig left
# /tmp/udrv-marker, writes it over sector 100 (the rig reads it back from the disk after
# UML is gone). Prints `uml: disk DEV sectors=N`, `uml: disk read`, `uml: disk written`.
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 100 ]; do
  for d in /sys/block/sd*; do
    [ "$(cat "$d/size" 2>/dev/null)" = 32768 ] && dev=/dev/${d##*/}
  done
  [ -n "$dev" ] || { sleep 0.1; i=$((i + 1)); }
done
[ -n "$dev" ] || { echo "uml: no 32768-sector disk"; ls /sys/block; exit 1; }
echo "uml: disk $dev sectors=32768"
dd if="$dev" of=/tmp/udrv-disk.img bs=65536 2>/dev/null || { echo "uml: reading $dev failed"; exit 1; }
echo "uml: disk read"
if [ -f /tmp/udrv-marker ]; then
  dd if=/tmp/udrv-marker of="$dev" bs=512 seek=100 count=1 conv=notrunc 2>/dev/null || { echo "uml: writing $dev failed"; exit 1; }
  sync
  echo "uml: disk written"
fi
