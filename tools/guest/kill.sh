# The killed-backend test's guest side: writes block after block, each with O_DIRECT and an
# fsync, and says which fsync returned. The host kills the backend in the middle.
i=0
while [ $i -lt 2000 ]; do
  yes "vmm-memory kill test block $i " | head -c 4096 > /tmp/p
  dd if=/tmp/p of=/dev/vda bs=4096 seek=$i count=1 oflag=direct conv=fsync,notrunc 2>/dev/null || exit 1
  echo "GUEST-SYNCED $i"
  i=$((i + 1))
done
