package proxmox

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		return Config{URL: "https://pve.example.com:8006", TokenID: "capi@pve!provider", TokenSecret: "s3cr3t"}
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
		base    string
	}{
		{name: "valid", mod: func(*Config) {}, base: "https://pve.example.com:8006/api2/json"},
		{name: "trailing slash", mod: func(c *Config) { c.URL += "/" }, base: "https://pve.example.com:8006/api2/json"},
		{name: "sub path kept", mod: func(c *Config) { c.URL = "https://proxy.example.com/pve" }, base: "https://proxy.example.com/pve/api2/json"},
		{name: "api2/json suffix", mod: func(c *Config) { c.URL += "/api2/json" }, wantErr: "must not contain /api2/json: the client adds it; use https://pve.example.com:8006"},
		{name: "api2/json suffix slash", mod: func(c *Config) { c.URL += "/api2/json/" }, wantErr: "the client adds it"},
		{name: "http refused", mod: func(c *Config) { c.URL = "http://pve:8006" }, wantErr: "use https://pve:8006"},
		{name: "http allowed", mod: func(c *Config) { c.URL = "http://127.0.0.1:8006"; c.AllowInsecureHTTP = true }, base: "http://127.0.0.1:8006/api2/json"},
		{name: "no scheme", mod: func(c *Config) { c.URL = "pve.example.com:8006" }, wantErr: "must start with https://"},
		{name: "empty url", mod: func(c *Config) { c.URL = "" }, wantErr: "URL is empty"},
		{name: "credentials in url", mod: func(c *Config) { c.URL = "https://root:pw@pve:8006" }, wantErr: "must not carry credentials"},
		{name: "token without realm", mod: func(c *Config) { c.TokenID = "capi!provider" }, wantErr: "user@realm!tokenname"},
		{name: "token without name", mod: func(c *Config) { c.TokenID = "capi@pve" }, wantErr: "user@realm!tokenname"},
		{name: "empty secret", mod: func(c *Config) { c.TokenSecret = " " }, wantErr: "secret for \"capi@pve!provider\" is empty"},
		{name: "bad CA", mod: func(c *Config) { c.CABundle = []byte("not pem") }, wantErr: "no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
				g.Expect(err).To(MatchError(ErrInvalidConfig))
				g.Expect(err.Error()).NotTo(ContainSubstring("s3cr3t"))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			base, err := c.apiBase()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(base).To(Equal(tt.base))
		})
	}
}

func TestConfigDefaultsTLS(t *testing.T) {
	g := NewWithT(t)
	c := Config{URL: "https://pve:8006", TokenID: "a@pve!b", TokenSecret: "x"}
	g.Expect(c.tlsConfig().InsecureSkipVerify).To(BeFalse(), "TLS verification must be on by default")
	c.InsecureSkipVerify = true
	g.Expect(c.tlsConfig().InsecureSkipVerify).To(BeTrue())
	d := c.withDefaults()
	g.Expect(d.Limits.MaxInFlight).To(Equal(8))
	g.Expect(d.Limits.MaxInFlightPerNode).To(Equal(4))
	g.Expect(d.Retry.MaxAttempts).To(Equal(6))
}
