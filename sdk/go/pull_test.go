package dvt_test

import "iter"

// iterPull turns a stream into a next function, to read it step by step between signals.
func iterPull[T any](seq iter.Seq2[T, error]) (func() (T, error, bool), func()) {
	return iter.Pull2(seq)
}
