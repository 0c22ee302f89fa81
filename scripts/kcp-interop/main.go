// Interop check between Zinx for Rust's KCP transport and xtaci/kcp-go v5,
// with the session settings Go Zinx applies (its zinx.json defaults).
//
//	go run main.go client 127.0.0.1:9001   # kcp-go client -> our server
//	go run main.go server 127.0.0.1:9101   # kcp-go echo listener <- our client
//
// The client sends Zinx TLV frames (message ID 1, big-endian 4-byte ID and
// length, then the data) and checks every echo; the server echoes the bytes
// it receives, which is what a Zinx echo handler returns for such frames.
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"

	kcp "github.com/xtaci/kcp-go"
)

// Go Zinx's defaults: KcpNoDelay 1, KcpInterval 10, KcpResend 2, KcpNc 1,
// KcpSendWindow 32, KcpRecvWindow 32, KcpStreamMode true, KcpACKNoDelay false.
func configure(s *kcp.UDPSession) {
	s.SetNoDelay(1, 10, 2, 1)
	s.SetWindowSize(32, 32)
	s.SetStreamMode(true)
	s.SetACKNoDelay(false)
}

func frame(id uint32, data []byte) []byte {
	out := make([]byte, 8+len(data))
	binary.BigEndian.PutUint32(out[0:], id)
	binary.BigEndian.PutUint32(out[4:], uint32(len(data)))
	copy(out[8:], data)
	return out
}

func client(addr string) error {
	s, err := kcp.DialWithOptions(addr, nil, 0, 0)
	if err != nil {
		return err
	}
	defer s.Close()
	configure(s)
	const count = 200
	start := time.Now()
	for i := 0; i < count; i++ {
		data := bytes.Repeat([]byte{byte(i)}, i*20%4000)
		want := frame(1, data)
		if _, err := s.Write(want); err != nil {
			return err
		}
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(s, got); err != nil {
			return fmt.Errorf("echo %d: %w", i, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("echo %d differs", i)
		}
	}
	fmt.Printf("kcp-go client: %d echoes from %s ok in %v (conv %d)\n", count, addr, time.Since(start), s.GetConv())
	return nil
}

func server(addr string) error {
	l, err := kcp.ListenWithOptions(addr, nil, 0, 0)
	if err != nil {
		return err
	}
	fmt.Printf("kcp-go echo listener on %s\n", l.Addr())
	for {
		s, err := l.AcceptKCP()
		if err != nil {
			return err
		}
		configure(s)
		go func() {
			defer s.Close()
			n, _ := io.Copy(s, s)
			fmt.Printf("kcp-go listener: session %d from %s echoed %d bytes\n", s.GetConv(), s.RemoteAddr(), n)
		}()
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: main (client|server) host:port")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = client(os.Args[2])
	case "server":
		err = server(os.Args[2])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
