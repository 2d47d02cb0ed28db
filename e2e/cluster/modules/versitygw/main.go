// versitygw serving only its posix backend: buckets are directories under one directory on this machine,
// answered by versitygw's own S3 API server (s3api) with the root account alone. Upstream's cmd/versitygw
// links every backend (Azure, an S3 proxy, ScoutFS, plugins), the web UI and website servers and the admin
// CLI, which the local cluster never starts; leaving them out keeps the component's cold build short on a
// 2-core machine. The flags are the few the cluster sets; everything else keeps upstream's defaults.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/versity/versitygw/auth"
	"github.com/versity/versitygw/backend/meta"
	"github.com/versity/versitygw/backend/posix"
	"github.com/versity/versitygw/s3api"
	"github.com/versity/versitygw/s3api/middlewares"
	"github.com/versity/versitygw/s3api/utils"
	"github.com/versity/versitygw/s3err"
)

// The root account's keys come from a file the caller keeps private (mode 0600): argv is readable by every
// user of the machine, and the cluster records each component's environment in its state file.
type credentials struct {
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

// rootOnly is upstream's single-account IAM, except that an unknown access key is auth.ErrNoSuchUser, which
// the S3 middleware answers as AWS does (403 InvalidAccessKeyId). Upstream's single-account mode answers
// XAdminUserNotFound, an admin-API error with status 404, which S3 clients would take for a missing object.
type rootOnly struct{ auth.IAMService }

func (r rootOnly) GetUserAccount(access string) (auth.Account, error) {
	account, err := r.IAMService.GetUserAccount(access)
	if errors.Is(err, s3err.GetAPIError(s3err.ErrAdminUserNotFound)) {
		return account, auth.ErrNoSuchUser
	}
	return account, err
}

// Stamped by the build (versions.toml) with the pinned versitygw release.
var version = "unknown"

// Upstream's defaults (cmd/versitygw flags and the posix command's).
const (
	maxConnections = 250000
	maxRequests    = 100000
	mpMaxParts     = 10000
	concurrency    = 5000
	ioBufferSize   = 1 << 20
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7070", "comma-separated host:port addresses to serve S3 on")
	credentialsFile := flag.String("credentials-file", "", "JSON file with the root account's accessKeyId and secretAccessKey")
	region := flag.String("region", "us-east-1", "the region S3 clients sign requests for")
	health := flag.String("health", "/health", "path answered 200 without authentication, for readiness probes")
	printVersion := flag.Bool("version", false, "print the versitygw release and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] DIRECTORY\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *printVersion {
		fmt.Printf("versitygw %s (posix backend only)\n", version)
		return
	}
	if flag.NArg() != 1 || *credentialsFile == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), strings.Split(*listen, ","), *credentialsFile, *region, *health); err != nil {
		log.Fatal(err)
	}
}

func run(root string, listen []string, credentialsFile, region, health string) error {
	raw, err := os.ReadFile(credentialsFile)
	if err != nil {
		return fmt.Errorf("read credentials: %w", err)
	}
	var creds credentials
	if err := json.Unmarshal(raw, &creds); err != nil || creds.AccessKeyID == "" || creds.SecretAccessKey == "" {
		// The parse error could quote the file's content: name the file only.
		return fmt.Errorf("%s: expected JSON with accessKeyId and secretAccessKey", credentialsFile)
	}

	// Object metadata (ETag, content type, user metadata) in extended attributes, upstream's default.
	if err := (meta.XattrMeta{}).Test(root); err != nil {
		return fmt.Errorf("xattr check failed: %w", err)
	}
	opts := posix.PosixOpts{Concurrency: concurrency, IOBufferSize: ioBufferSize}
	opts.SetNewDirPerm(0o755)
	opts.SetNewFilePerm(0o644)
	be, err := posix.New(root, meta.XattrMeta{}, opts)
	if err != nil {
		return fmt.Errorf("init posix backend: %w", err)
	}
	defer be.Shutdown()

	utils.SetBucketNameValidationStrict(true)
	account := auth.Account{Access: creds.AccessKeyID, Secret: creds.SecretAccessKey, Role: auth.RoleAdmin}
	// No audit logger, event sender or metrics manager: each request is logged (method, path, status; no
	// credentials) by the server's request logger on stdout.
	srv, err := s3api.New(
		be,
		middlewares.RootUserConfig{Access: account.Access, Secret: account.Secret},
		region,
		rootOnly{auth.NewIAMServiceSingle(account)},
		nil, nil, nil, nil,
		s3api.WithConcurrencyLimiter(maxConnections, maxRequests),
		s3api.WithMpMaxParts(mpMaxParts),
		s3api.WithHealth(health),
		s3api.WithKeepAlive(),
		s3api.WithOnListen(func() { log.Printf("versitygw %s serving %s on %s", version, root, strings.Join(listen, ",")) }),
	)
	if err != nil {
		return fmt.Errorf("init gateway: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.ServeMultiPort(listen) }()
	select {
	case err = <-served:
	case <-ctx.Done():
		log.Print("terminating signal caught, shutting down")
	}
	if shutdownErr := srv.ShutDown(); shutdownErr != nil && err == nil {
		err = shutdownErr
	}
	return err
}
