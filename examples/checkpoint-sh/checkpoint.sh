#!/bin/sh
# A long computation that speaks ferry's checkpoint protocol
# (docs/checkpointing.md), in POSIX sh: it sums a deterministic sequence over
# STEPS steps and prints "result N". Usage: checkpoint.sh [STEPS] [DELAY]
steps=${1:-300}
delay=${2:-0.01}
i=0 x=1 sum=0
if [ "$FERRY_RESTORE" = 1 ]; then
	read -r i x sum < "$FERRY_RESTORE_DIR/state" || exit 1
	echo "restored at step $i"
fi
ckpt=0
trap 'ckpt=1' USR2
while [ "$i" -lt "$steps" ]; do
	if [ "$ckpt" = 1 ]; then
		echo "$i $x $sum" > "$FERRY_CHECKPOINT_DIR/state" || exit 1
		[ -e "$FERRY_CHECKPOINT_DIR/FERRY_CHECKPOINT_CONTINUE" ] || exit "${FERRY_CHECKPOINT_EXIT_CODE:-85}"
		: > "$FERRY_CHECKPOINT_DIR/FERRY_CHECKPOINT_DONE"
		ckpt=0
	fi
	i=$((i + 1))
	x=$(( (x * 1103515245 + 12345) % 2147483648 ))
	sum=$(( (sum + x) % 1000000007 ))
	[ $((i % 20)) = 0 ] && echo "step $i"
	sleep "$delay"
done
echo "result $sum"
