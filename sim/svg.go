package sim

import (
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteDir writes summary.csv, summary.json and, per result, jobs-P.csv,
// events-P.log, util-P.svg and gantt-P.svg into dir.
func WriteDir(dir string, rs []*Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	write := func(name string, f func(io.Writer) error) error {
		fh, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := f(fh); err != nil {
			fh.Close()
			return err
		}
		return fh.Close()
	}
	if err := write("summary.csv", func(w io.Writer) error { return CSV(w, rs) }); err != nil {
		return err
	}
	if err := write("summary.json", func(w io.Writer) error { return JSON(w, rs) }); err != nil {
		return err
	}
	if err := write("summary.txt", func(w io.Writer) error { return Table(w, rs) }); err != nil {
		return err
	}
	for _, r := range rs {
		p := r.Policy
		if err := write("jobs-"+p+".csv", r.JobsCSV); err != nil {
			return err
		}
		if err := write("events-"+p+".log", r.WriteLog); err != nil {
			return err
		}
		if err := write("util-"+p+".svg", r.UtilSVG); err != nil {
			return err
		}
		if err := write("gantt-"+p+".svg", func(w io.Writer) error { return r.GanttSVG(w, 300) }); err != nil {
			return err
		}
	}
	return nil
}

const (
	svgW, svgH = 960, 360
	padL, padR = 60, 20
	padT, padB = 30, 40
)

func timeLabel(s int64) string {
	switch {
	case s >= 2*86400:
		return fmt.Sprintf("%.0fd", float64(s)/86400)
	case s >= 2*3600:
		return fmt.Sprintf("%.0fh", float64(s)/3600)
	case s >= 120:
		return fmt.Sprintf("%.0fm", float64(s)/60)
	}
	return fmt.Sprintf("%ds", s)
}

func axes(b *strings.Builder, w, h int, t0, t1 int64, title, ylabel string, yticks []string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", w, h, w, h)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(b, `<text x="%d" y="18" font-size="13">%s</text>`+"\n", padL, html.EscapeString(title))
	pw, ph := w-padL-padR, h-padT-padB
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", padL, padT, pw, ph)
	for i := 0; i <= 5; i++ {
		x := padL + pw*i/5
		t := t0 + (t1-t0)*int64(i)/5
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/><text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x, padT, x, padT+ph, x, padT+ph+15, timeLabel(t-t0))
	}
	for i, l := range yticks {
		y := padT + ph - ph*i/max(len(yticks)-1, 1)
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", padL-5, y+4, l)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">time</text>`+"\n", padL+pw/2, h-5)
	fmt.Fprintf(b, `<text x="12" y="%d" transform="rotate(-90 12 %d)" text-anchor="middle">%s</text>`+"\n", padT+ph/2, padT+ph/2, ylabel)
}

// UtilSVG plots the fraction of CPUs doing useful work over time, averaged
// over at most 900 buckets.
func (r *Result) UtilSVG(w io.Writer) error {
	var b strings.Builder
	t0, t1 := r.span()
	axes(&b, svgW, svgH, t0, t1, fmt.Sprintf("%s — %s: utilization (mean %.1f%%)", r.Workload, r.Policy, 100*r.Summary.Utilization), "busy CPUs", []string{"0%", "25%", "50%", "75%", "100%"})
	pw, ph := svgW-padL-padR, svgH-padT-padB
	const buckets = 900
	span := float64(max(t1-t0, 1))
	area := make([]float64, buckets)
	for i, p := range r.Util {
		end := t1
		if i+1 < len(r.Util) {
			end = r.Util[i+1].T
		}
		bw := span / buckets
		a, z := float64(p.T-t0), float64(end-t0)
		for k := max(int(a/bw), 0); k < buckets && float64(k)*bw < z; k++ {
			lo, hi := max(a, float64(k)*bw), min(z, float64(k+1)*bw)
			if hi > lo {
				area[k] += p.Frac * (hi - lo)
			}
		}
	}
	b.WriteString(`<polyline fill="#6fa8dc" stroke="none" points="`)
	fmt.Fprintf(&b, "%d,%d ", padL, padT+ph)
	for k := range buckets {
		frac := area[k] / (span / buckets)
		frac = min(max(frac, 0), 1)
		x0 := float64(padL) + float64(pw)*float64(k)/buckets
		x1 := float64(padL) + float64(pw)*float64(k+1)/buckets
		y := float64(padT) + float64(ph)*(1-frac)
		fmt.Fprintf(&b, "%.1f,%.1f %.1f,%.1f ", x0, y, x1, y)
	}
	fmt.Fprintf(&b, "%d,%d\"/>\n</svg>\n", padL+pw, padT+ph)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Result) span() (int64, int64) {
	var t0, t1 int64 = -1, 0
	for _, j := range r.Jobs {
		if t0 < 0 || j.Submit < t0 {
			t0 = j.Submit
		}
		t1 = max(t1, j.End)
	}
	if t0 < 0 {
		t0 = 0
	}
	if t1 <= t0 {
		t1 = t0 + 1
	}
	return t0, t1
}

// GanttSVG draws one row per job (the first maxJobs): waiting in grey,
// running in blue, stopped after a start (suspended or switching) in
// orange.
func (r *Result) GanttSVG(w io.Writer, maxJobs int) error {
	n := min(len(r.Jobs), maxJobs)
	rowH := 14
	if n > 40 {
		rowH = max(2, 560/n)
	}
	h := padT + padB + n*rowH
	var t1 int64
	t0 := int64(-1)
	for _, j := range r.Jobs[:n] {
		if t0 < 0 || j.Submit < t0 {
			t0 = j.Submit
		}
		t1 = max(t1, j.End)
	}
	t0 = max(t0, 0)
	if t1 <= t0 {
		t1 = t0 + 1
	}
	var b strings.Builder
	title := fmt.Sprintf("%s — %s: jobs (grey waiting, blue running, orange suspended)", r.Workload, r.Policy)
	if n < len(r.Jobs) {
		title += fmt.Sprintf(", first %d of %d", n, len(r.Jobs))
	}
	axes(&b, svgW, h, t0, t1, title, "jobs", nil)
	pw := svgW - padL - padR
	x := func(t int64) float64 { return float64(padL) + float64(pw)*float64(t-t0)/float64(t1-t0) }
	runFrom := make([]int64, n)
	stopFrom := make([]int64, n)
	for i := range runFrom {
		runFrom[i], stopFrom[i] = -1, -1
	}
	rect := func(i int, a, z int64, color string) {
		if z < a {
			return
		}
		wd := max(x(z)-x(a), 0.5)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", x(a), padT+i*rowH, wd, max(rowH-1, 1), color)
	}
	for i, j := range r.Jobs[:n] {
		if j.Start > j.Submit {
			rect(i, j.Submit, j.Start, "#bbb")
		}
		if rowH >= 10 {
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" font-size="9">%s</text>`+"\n", padL-3, padT+i*rowH+rowH-3, html.EscapeString(j.Name))
		}
	}
	for _, e := range r.Events {
		j := int(e.Job)
		if j < 0 || j >= n {
			continue
		}
		switch e.Kind {
		case EvRun:
			if stopFrom[j] >= 0 {
				rect(j, stopFrom[j], e.T, "#f0a030")
				stopFrom[j] = -1
			}
			runFrom[j] = e.T
		case EvStop, EvComplete:
			if runFrom[j] >= 0 {
				rect(j, runFrom[j], e.T, "#2a6fb0")
				runFrom[j] = -1
			}
			if e.Kind == EvStop {
				stopFrom[j] = e.T
			}
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
