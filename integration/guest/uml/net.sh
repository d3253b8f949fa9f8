# Shared by the UML tasks (sourced, not run): the served e1000e's interface.
#   e1000e_interface   prints the name of the interface on UML's e1000e driver, waiting
#                      up to 10 s for it to register; fails if none does
#   bring_up IF ADDR   sets IF up with ADDR (e.g. 10.0.0.2/24), waits up to 10 s for carrier
e1000e_interface() {
  local i=0 n
  while [ $i -lt 100 ]; do
    for n in /sys/class/net/*; do
      if [ "$(readlink "$n/device/driver" 2>/dev/null | sed 's,.*/,,')" = e1000e ]; then
        echo "${n##*/}"
        return 0
      fi
    done
    sleep 0.1; i=$((i + 1))
  done
  return 1
}

bring_up() {
  local i=0
  ip link set "$1" up
  ip address add "$2" dev "$1"
  until [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ] || [ $i -ge 100 ]; do
    sleep 0.1; i=$((i + 1))
  done
}
