# Timings for `integration/rig bench uml`, the same whether the device reaches UML through
# udrv's frontend or through UML's own vfio_uml. Kernel command line parameters:
#   udrv_uml_bench=net    e1000e: eth up as 10.0.0.2/24; statistics and mtu reads; ping 10.0.0.1
#   udrv_uml_bench=disk   ahci: O_DIRECT reads of the first disk, 64 KiB then 1 MiB blocks
#   udrv_uml_count=N      reads of each file per round, 9 rounds (net)
# Prints `uml-probe: ...` lines and `uml: ping ...` for the rig side to parse.
bench=
count=2000
for word in $(cat /proc/cmdline); do
  case "$word" in
    udrv_uml_bench=*) bench=${word#*=} ;;
    udrv_uml_count=*) count=${word#*=} ;;
  esac
done
case "$bench" in
  net)
    . /tasks/net.sh
    eth=$(e1000e_interface) || { echo "uml: no e1000e interface"; exit 1; }
    bring_up "$eth" 10.0.0.2/24
    echo "uml: $eth carrier $(cat /sys/class/net/$eth/carrier 2>/dev/null)"
    uml-probe read-pair "/sys/class/net/$eth/statistics/rx_bytes" "/sys/class/net/$eth/mtu" \
      "$count" 9 || exit 1
    # The first pings resolve the neighbour; the timed ones follow.
    ping -c 3 -W 2 10.0.0.1 >/dev/null 2>&1
    ping -c 20 -W 2 10.0.0.1 | sed -n 's/^round-trip/uml: ping round-trip/p; s/.* packets transmitted/uml: ping &/p'
    ;;
  disk)
    dev=
    i=0
    while [ -z "$dev" ] && [ $i -lt 50 ]; do
      [ -b /dev/sda ] && dev=/dev/sda
      [ -n "$dev" ] || { sleep 0.1; i=$((i + 1)); }
    done
    [ -n "$dev" ] || { echo "uml: no disk"; exit 1; }
    uml-probe read-disk "$dev" 16777216 65536 || exit 1
    uml-probe read-disk "$dev" 16777216 1048576 || exit 1
    ;;
  *) echo "uml: udrv_uml_bench must be net or disk"; exit 2 ;;
esac
