# The two-queue test's guest side: two vCPUs, a device of two queues; writers pinned to each
# vCPU (so blk-mq sends their requests down both queues), then a readback of every block.
set -e
echo "GUEST-QUEUES $(ls /sys/block/vda/mq | wc -l)"
for cpu in 0 1; do
  taskset -c $cpu sh -c "
    i=0
    while [ \$i -lt 64 ]; do
      b=\$(( $cpu * 64 + i ))
      yes \"vmm-memory mq block \$b \" | head -c 4096 > /tmp/m\$b
      dd if=/tmp/m\$b of=/dev/vda bs=4096 seek=\$b count=1 oflag=direct conv=notrunc 2>/dev/null
      i=\$((i + 1))
    done" &
done
wait
dd if=/dev/zero of=/dev/vda bs=4096 count=0 conv=fsync,notrunc 2>/dev/null
b=0
while [ $b -lt 128 ]; do
  dd if=/dev/vda of=/tmp/r bs=4096 skip=$b count=1 iflag=direct 2>/dev/null
  cmp /tmp/m$b /tmp/r
  b=$((b + 1))
done
echo "GUEST-MQ-OK"
