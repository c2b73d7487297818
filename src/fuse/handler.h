// What a transport hands its requests to: the FUSE session (FuseSession)
// over any backend, a remote one too. A transport needs no more than this.
#pragma once

#include <cstddef>
#include <memory>

#include "backend/worker_hook.h"
#include "fuse/request.h"

namespace dpfs::fuse {

class RequestHandler {
 public:
  // Takes one request; its complete() is called exactly once, now or later,
  // possibly from another thread. Safe for concurrent use.
  virtual void handle(Request& req) = 0;
  // The buffer sizes a transport must offer for requests and replies.
  virtual size_t max_request_size() const = 0;
  virtual size_t max_reply_size() const = 0;
  // True once DESTROY was handled (a transport may stop serving).
  virtual bool destroyed() const = 0;
  // The tenant went away without DESTROY: the next request must be INIT.
  virtual void reset() = 0;
  // A transport's worker thread starting, on that thread: the backend's
  // per-worker hook (backend/worker_hook.h), which the worker then drives
  // and destroys before it ends; nullptr if there is none. A thread that
  // calls handle() without a hook is served too (the backend falls back to
  // what needs no help from the caller's loop).
  virtual std::unique_ptr<WorkerHook> attach_worker() { return nullptr; }

 protected:
  ~RequestHandler() = default;
};

}  // namespace dpfs::fuse
