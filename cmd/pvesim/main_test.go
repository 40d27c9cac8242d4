package main

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestRefusesNonLoopback(t *testing.T) {
	g := NewWithT(t)
	g.Expect(run([]string{"--listen", "0.0.0.0:0"})).To(MatchError(ContainSubstring("non-loopback")))
	g.Expect(run([]string{"--listen", "192.0.2.1:8006"})).To(MatchError(ContainSubstring("non-loopback")))
}
