package workload

import "sort"

func sortJobs(js []Job) {
	sort.SliceStable(js, func(a, b int) bool { return js[a].Submit < js[b].Submit })
}
