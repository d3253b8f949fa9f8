# Timings for `integration/rig bench uml`, the same whether the device reaches UML through
# udrv's frontend or directly (UML's vfio_uml; ubd for the disk). Kernel command line parameters:
#   udrv_uml_bench=net    e1000e: eth up as 10.0.0.2/24; statistics and mtu reads; ping 10.0.0.1
#   udrv_uml_bench=disk   O_DIRECT reads of the whole 16 MiB (32768-sector) disk
#   udrv_uml_disk=P       disk: the one named P* (sd: the served ahci; ubd: ubd0=)
#   udrv_uml_block=N      disk: N-byte reads
#   udrv_uml_gate=1       disk: say `uml: disk DEV`, wait for /tmp/udrv-bench-go, read,
#                         say `uml: disk read done`, wait for /tmp/udrv-bench-release (the
#                         rig reads the frontend's counters around the reads)
#   udrv_uml_count=N      reads of each file per round, 9 rounds (net)
# Prints `guest-probe: ...` lines and `uml: ping ...` for the rig side to parse.
bench=
count=2000
disk=sd
block=65536
gate=
for word in $(cat /proc/cmdline); do
  case "$word" in
    udrv_uml_bench=*) bench=${word#*=} ;;
    udrv_uml_count=*) count=${word#*=} ;;
    udrv_uml_disk=*) disk=${word#*=} ;;
    udrv_uml_block=*) block=${word#*=} ;;
    udrv_uml_gate=*) gate=${word#*=} ;;
  esac
done
case "$bench" in
  net)
    . /tasks/net.sh
    eth=$(e1000e_interface) || { echo "uml: no e1000e interface"; exit 1; }
    bring_up "$eth" 10.0.0.2/24
    echo "uml: $eth carrier $(cat /sys/class/net/$eth/carrier 2>/dev/null)"
    guest-probe read-pair "/sys/class/net/$eth/statistics/rx_bytes" "/sys/class/net/$eth/mtu" \
      "$count" 9 || exit 1
    # The first pings resolve the neighbour; the timed ones follow.
    ping -c 3 -W 2 10.0.0.1 >/dev/null 2>&1
    ping -c 20 -W 2 10.0.0.1 | sed -n 's/^round-trip/uml: ping round-trip/p; s/.* packets transmitted/uml: ping &/p'
    ;;
  disk)
    # Waits up to 30 s for file $1 (the rig creates it in this root).
    wait_for() {
      i=0
      while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
      [ -e "$1" ] || { echo "uml: $1 never came"; return 1; }
    }
    dev=
    i=0
    while [ -z "$dev" ] && [ $i -lt 100 ]; do
      for d in /sys/block/"$disk"*; do
        [ "$(cat "$d/size" 2>/dev/null)" = 32768 ] && dev=/dev/${d##*/}
      done
      [ -n "$dev" ] || { sleep 0.1; i=$((i + 1)); }
    done
    [ -n "$dev" ] || { echo "uml: no 32768-sector $disk disk"; ls /sys/block; exit 1; }
    # Let the partition scan that follows a new disk finish before anyone counts.
    sleep 1
    echo "uml: disk $dev"
    if [ "$gate" = 1 ]; then wait_for /tmp/udrv-bench-go || exit 1; fi
    guest-probe read-disk "$dev" 16777216 "$block" || exit 1
    if [ "$gate" = 1 ]; then
      echo "uml: disk read done"
      wait_for /tmp/udrv-bench-release || exit 1
    fi
    ;;
  *) echo "uml: udrv_uml_bench must be net or disk"; exit 2 ;;
esac
