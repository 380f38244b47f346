// Package controller is ferry's control plane: job specs, the API server,
// and the loop that carries out plans on real agents.
//
// The loop, in numbered steps (docs/controller.md has the diagram):
//
//  1. observe: agents' heartbeats (tasks with epochs, usage) update the
//     controller's view; a node that misses heartbeats is marked down and
//     its tasks are reported lost (they restart elsewhere).
//  2. decide: the policy (policy.Policy) returns the wanted state of every
//     task from the configuration and the queue.
//  3. plan: plan.Solve turns the wanted states into a viable plan.
//  4. execute: the plan is journaled in the store; the Executor (a pure
//     core, Ready/Advance) emits the actions whose dependencies are done,
//     within the parallel limits; a thin dispatcher calls the agents and
//     feeds their outcomes back. Every action's start and end are journaled,
//     so a restarted controller finishes or reconciles the plan.
package controller
