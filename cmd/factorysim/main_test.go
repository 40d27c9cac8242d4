package main

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestRunRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8095", ":8095", "192.0.2.1:8095"} {
		err := run([]string{"--listen", addr})
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("only loopback")), addr)
	}
}

func TestRunRejectsBadErrorRate(t *testing.T) {
	NewWithT(t).Expect(run([]string{"--error-rate", "2"})).To(MatchError(ContainSubstring("between 0 and 1")))
}
