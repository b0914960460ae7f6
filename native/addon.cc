// Module entry point of vrio_io.node.
#include "io.h"

namespace vrio {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData();
  data->channelCtor = Napi::Persistent(Channel::Define(env));
  env.SetInstanceData(data);  // freed by the env (per worker thread, no process-wide state)
  exports.Set("openPacket", Napi::Function::New<OpenPacket>(env, "openPacket"));
  exports.Set("openTap", Napi::Function::New<OpenTap>(env, "openTap"));
  exports.Set("interfaceInfo", Napi::Function::New<InterfaceInfo>(env, "interfaceInfo"));
  exports.Set("fallocate", Napi::Function::New<Fallocate>(env, "fallocate"));
  exports.Set("extents", Napi::Function::New<Extents>(env, "extents"));
  exports.Set("fadvise", Napi::Function::New<Fadvise>(env, "fadvise"));
  exports.Set("XtsCipher", XtsCipher::Define(env));
  exports.Set("FrameAead", FrameAead::Define(env));
  Napi::Function fastPath = FastPath::Define(env);
  data->fastPathCtor = Napi::Persistent(fastPath);
  exports.Set("FastPath", fastPath);
  exports.Set("aeadImplementation", Napi::Function::New(env, AeadImplementation, "aeadImplementation"));
  exports.Set("ioNowait", Napi::Function::New<IoNowait>(env, "ioNowait"));
  exports.Set("FuseDisk", DefineFuseDisk(env));
  exports.Set("UnixListener", DefineUnixListener(env));
  exports.Set("dpiScan", Napi::Function::New<DpiScan>(env, "dpiScan"));
  exports.Set("pidfdGetfd", Napi::Function::New<PidfdGetfd>(env, "pidfdGetfd"));
  exports.Set("gcWatch", Napi::Function::New<GcWatchStart>(env, "gcWatch"));
  exports.Set("tuneMalloc", Napi::Function::New<TuneMalloc>(env, "tuneMalloc"));
  exports.Set("setAffinity", Napi::Function::New<SetAffinity>(env, "setAffinity"));
  return exports;
}

}  // namespace vrio

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return vrio::Init(env, exports); }

NODE_API_MODULE(vrio_io, InitModule)
