package main

import (
	"fmt"
	"net"
	"time"

	"github.com/ferrycluster/ferry/pki"
	"github.com/spf13/cobra"
)

func init() {
	tlsCmd := &cobra.Command{
		Use:   "tls",
		Short: "manage the cluster certificate authority and node certificates",
	}

	var initDir string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "create a cluster CA (ECDSA P-256) in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pki.Init(initDir, time.Now()); err != nil {
				return withCode(2, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created CA %s/%s\n", initDir, pki.CACertFile)
			return nil
		},
	}
	initCmd.Flags().StringVar(&initDir, "dir", "", "TLS directory (created 0700)")
	initCmd.MarkFlagRequired("dir")

	var (
		issueDir, name, role string
		ips, dnsNames        []string
		validity             time.Duration
	)
	issueCmd := &cobra.Command{
		Use:   "issue",
		Short: "issue a certificate for an agent, server (controller) or client",
		Long: "issue signs NAME.crt and NAME.key (0600) with the CA in --dir. The role is\n" +
			"encoded in the certificate (OU and URI SAN ferry://role/ROLE/NAME): agents accept\n" +
			"commands from servers and peer agents; clients may only read.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := pki.ParseRole(role)
			if err != nil {
				return withCode(2, err)
			}
			req := pki.IssueRequest{Name: name, Role: r, DNSNames: dnsNames, Validity: validity}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return withCode(2, fmt.Errorf("--ip %q: not an IP address", s))
				}
				req.IPs = append(req.IPs, ip)
			}
			if err := pki.Issue(issueDir, req, time.Now()); err != nil {
				return withCode(2, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s (role %s)\n", pki.CertFile(issueDir, name), r)
			return nil
		},
	}
	issueCmd.Flags().StringVar(&issueDir, "dir", "", "TLS directory holding the CA")
	issueCmd.Flags().StringVar(&name, "name", "", "identity name (node name for agents)")
	issueCmd.Flags().StringVar(&role, "role", "agent", "agent, server or client")
	issueCmd.Flags().StringSliceVar(&ips, "ip", nil, "IP address SAN (repeatable; default 127.0.0.1)")
	issueCmd.Flags().StringSliceVar(&dnsNames, "dns", nil, "extra DNS SAN (repeatable)")
	issueCmd.Flags().DurationVar(&validity, "validity", 365*24*time.Hour, "certificate lifetime")
	issueCmd.MarkFlagRequired("dir")
	issueCmd.MarkFlagRequired("name")

	tlsCmd.AddCommand(initCmd, issueCmd)
	root.AddCommand(tlsCmd)
}
