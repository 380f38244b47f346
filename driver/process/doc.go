// Package process is the process driver: it runs plain processes as ferry
// tasks and moves them between nodes by cooperative checkpointing, the
// protocol HTCondor offers its users (docs/checkpointing.md is the manual
// for application authors).
//
// # Protocol
//
// The job gets FERRY_CHECKPOINT_DIR (an empty directory, emptied again
// before every request) and, when it starts from a checkpoint, FERRY_RESTORE=1
// and FERRY_RESTORE_DIR. On a checkpoint request the driver sends the
// checkpoint signal (SIGUSR2 unless the spec says otherwise) to the job's
// main process. The job writes its state into FERRY_CHECKPOINT_DIR and then
// either exits with the checkpoint exit code (85 by default) or creates the
// file FERRY_CHECKPOINT_DONE there and keeps running. The driver then seals
// the directory (fsync of every file and directory, a manifest
// .ferry-checkpoint.json listing files and sizes) and renames it to the
// committed name. A crash, kill or timeout at any point leaves the last
// committed checkpoint as it was.
//
// # Operations
//
//   - Suspend(dir): checkpoint-and-stop; the task is forgotten.
//   - Checkpoint(dir): checkpoint-and-continue (driver.Checkpointer).
//   - Resume(spec, dir): start from a committed checkpoint, any node.
//   - Pause / Unpause: SIGSTOP / SIGCONT to the process group.
//   - A job that exits with the checkpoint code unasked (self-checkpointing)
//     has its checkpoint committed and is restarted from it.
//   - Periodic checkpoints (ProcessSpec.CheckpointInterval) go to
//     checkpoints/<seq>; Config.OnCheckpoint is called with each one and
//     LatestCheckpoint returns the last.
//   - CheckFreeSpace and SendImage / ReceiveImage: what an agent uses to
//     move an image to another node, refusing it before the transfer when
//     the destination lacks the space.
//
// # Layout
//
//	<data-dir>/
//	  logs/<id>.log              stdout+stderr of every incarnation (kept after Stop/Suspend)
//	  tasks/<id>/
//	    state.json               the driver's record: spec, incarnation, paused, cgroups, last checkpoint
//	    launch.json              what the supervisor runs: argv, env, dir, cgroups
//	    job.json                 written by the supervisor: its pid and the job's pid (+ start times)
//	    exit.json                written by the supervisor when the job ends: exit code or signal
//	    staging/                 FERRY_CHECKPOINT_DIR
//	    checkpoints/<seq>/       last committed periodic checkpoint
//	    restore/                 FERRY_RESTORE_DIR: the checkpoint this incarnation started from
//
// Every JSON file is written to a temporary name and renamed (atomic for
// readers and against a killed writer). Only checkpoints are fsynced: the
// other files describe running processes, which a machine crash ends anyway.
//
// # Processes
//
// The driver starts a supervisor — its own binary re-executed with
// FERRY_PROCESS_SUPERVISOR set, caught by this package's init — in a new
// session (Setsid), so the job survives an agent restart. The supervisor
// joins the task's cgroups, starts the job, records its pid and, when it
// ends, its exit status. A restarted driver reads state.json and job.json,
// checks pids against their /proc start times, and watches the supervisor
// with a pidfd. Stop and Pause signal the whole process group; the
// checkpoint signal goes to the job's main process only.
//
// CPU and memory limits use cgroup v2 where its controllers are delegated,
// cgroup v1 cpu and memory hierarchies otherwise, always below the driver's
// own cgroup; Capabilities says what is enforced and Status.Message says
// when a task's limits are not.
package process
