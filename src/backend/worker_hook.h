// What a backend keeps on a transport's worker thread: an io_uring ring,
// say, that the worker's event loop drives.
//
// A transport worker takes requests in batches (the chains a kick made
// available, the requests /dev/fuse had queued). A backend that starts I/O
// can then prepare it during the batch and start all of it at the end, in
// one system call, and answer it when the worker's loop sees its completion
// descriptor become readable -- without a thread of its own.
//
// The worker's side of the contract, in its loop:
//
//   hook = handler.attach_worker();        // once, on the worker thread
//   for (;;) {
//     take and handle a batch of requests  // the backend prepares I/O
//     hook->flush();                       // starts it (and answers what
//                                          // completed at once)
//     wait for requests or hook->fd()      // or, polling: hook->poll()
//     if hook->fd() is readable: hook->on_readable();
//   }
//   hook.reset();                          // before the thread ends
//
// Replies may be answered from inside flush(), on_readable(), poll() and the
// destructor, on the worker thread.
//
// Not thread-safe: made, called and destroyed on one worker thread.
#pragma once

namespace dpfs {

class WorkerHook {
 public:
  // Starts what is still prepared and waits until everything in flight has
  // completed and been answered: the tenant's buffers that I/O points into
  // stay valid until then. May block (on the disk).
  virtual ~WorkerHook() = default;

  // A descriptor the worker waits on with its own (level-triggered POLLIN);
  // when it is readable, on_readable() has completions to answer.
  virtual int fd() const = 0;
  // Answers what has completed. Never blocks.
  virtual void on_readable() = 0;
  // The end of a batch: starts everything the batch prepared, then answers
  // what completed at once. Prepared work is not started before this: a
  // worker must call it before it waits for anything.
  virtual void flush() = 0;
  // A busy-polling worker's round: answers what has completed, without a
  // system call when nothing has. Returns whether anything was answered.
  virtual bool poll() = 0;
};

}  // namespace dpfs
