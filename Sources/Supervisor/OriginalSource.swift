/// Original source in in-pod mode (ENABLE_ORIG_SRC, ISTIO_COMPAT §2): a NetWorker binds each
/// connection to an application to the client's address. That needs bind(2) in its sandbox, so
/// the decision is made once, here, and expressed only as the NetWorker's seccomp policy keeping
/// or losing its `bind` rule: the NetWorker binds exactly when that rule is there, Landlock gets
/// port 0 as its one bind port then, and the Supervisor makes the pod sockets transparent.
enum OriginalSource {
    /// Unset means "where the kernel allows": only with Landlock ABI 4 (Linux 6.7), which holds
    /// the bind to port 0; true asks for it regardless; false, or any mode but in-pod, never.
    static func networkerBinds(inPodMode: Bool, setting: Bool?, landlockABI: Int) -> Bool {
        guard inPodMode, setting != false else { return false }
        return setting == true || landlockABI >= 4
    }
}
