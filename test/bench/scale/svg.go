package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"sort"
)

// A small hand-rolled SVG writer: two charts need no plotting library in the module graph.

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// overheadSVG draws the cumulative distribution of the overhead (bootstrap data ready →
// provisioned) per platform.
func overheadSVG(rep *Report) []byte {
	const w, h, left, right, top, bottom = 640.0, 360.0, 60.0, 20.0, 40.0, 50.0
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" text-anchor="middle" font-size="14">Overhead: bootstrap data ready → provisioned (N=%d, profile %s), CDF</text>`+"\n", w/2, rep.N, html.EscapeString(rep.Profile))
	maxX := 0.0
	for _, p := range rep.Platforms {
		maxX = math.Max(maxX, p.Overhead.Max)
	}
	maxX = niceCeil(maxX)
	pw, ph := w-left-right, h-top-bottom
	x := func(v float64) float64 { return left + v/maxX*pw }
	y := func(v float64) float64 { return top + (1-v)*ph }
	axes(&b, left, top, pw, ph)
	for i := 0; i <= 5; i++ {
		v := maxX * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(v), top+ph+16, trim(v))
		q := float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%.0f%%</text>`+"\n", left-6, y(q)+4, q*100)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(q), left+pw, y(q))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">seconds</text>`+"\n", left+pw/2, h-12)
	for i, p := range rep.Platforms {
		s := append([]float64(nil), p.Samples...)
		sort.Float64s(s)
		if len(s) == 0 {
			continue
		}
		c := palette[i%len(palette)]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="`, c)
		prev := 0.0
		for j, v := range s {
			fmt.Fprintf(&b, "%.1f,%.1f %.1f,%.1f ", x(v), y(prev), x(v), y(float64(j+1)/float64(len(s))))
			prev = float64(j+1) / float64(len(s))
		}
		b.WriteString("\"/>\n")
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s: p50 %.2f s, p99 %.2f s, max %.2f s (%d machines)</text>`+"\n",
			left+pw-330, top+10+float64(i)*18, c, left+pw-314, top+21+float64(i)*18, html.EscapeString(p.Platform), p.Overhead.P50, p.Overhead.P99, p.Overhead.Max, p.Machines)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// callsSVG draws the probes' Proxmox calls per VM create by endpoint, one bar group per
// endpoint, beside the minimum sequence.
func callsSVG(rep *Report) []byte {
	endpoints := map[string]bool{}
	min := map[string]int{}
	for _, k := range rep.MinimumSequence {
		min[k]++
		endpoints[k] = true
	}
	for _, p := range rep.Probes {
		for k := range p.Calls {
			endpoints[k] = true
		}
	}
	keys := sortedKeys(endpoints)
	series := []struct {
		name  string
		calls map[string]int
		total int
	}{{"minimum", min, len(rep.MinimumSequence)}}
	for _, p := range rep.Probes {
		series = append(series, struct {
			name  string
			calls map[string]int
			total int
		}{p.Machine + " (" + p.Platform + ", image " + cachedLabel(p.ImageCached) + ")", p.Calls, p.Total})
	}
	maxV := 1
	for _, s := range series {
		for _, v := range s.calls {
			maxV = max(maxV, v)
		}
	}
	const left, right, top, barH, gap = 360.0, 60.0, 50.0, 7.0, 6.0
	groupH := float64(len(series))*barH + gap
	w := 960.0
	h := top + float64(len(keys))*groupH + 30 + float64(len(series))*18
	pw := w - left - right
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" text-anchor="middle" font-size="14">Proxmox calls per VM create by endpoint (profile %s)</text>`+"\n", w/2, html.EscapeString(rep.Profile))
	for i, k := range keys {
		gy := top + float64(i)*groupH
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, gy+float64(len(series))*barH/2+4, html.EscapeString(k))
		for j, s := range series {
			v := s.calls[k]
			bw := float64(v) / float64(maxV) * pw
			fmt.Fprintf(&b, `<rect x="%.0f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, left, gy+float64(j)*barH, bw, barH-1, palette[j%len(palette)])
			if v > 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="8">%d</text>`, left+bw+3, gy+float64(j)*barH+barH-1, v)
			}
			b.WriteString("\n")
		}
	}
	ly := top + float64(len(keys))*groupH + 20
	for j, s := range series {
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s: %d calls</text>`+"\n",
			left, ly+float64(j)*18-10, palette[j%len(palette)], left+16, ly+float64(j)*18, html.EscapeString(s.name), s.total)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func axes(b *bytes.Buffer, left, top, pw, ph float64) {
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top+ph, left+pw, top+ph)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top, left, top+ph)
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trim(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	for len(s) > 1 && (s[len(s)-1] == '0') {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}
