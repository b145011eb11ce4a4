//! The control plane pieces that decide where storage goes: the PV controller (static
//! binding, pvc-protection, reclaim), the scheduler (node selection with volume topology,
//! storage capacity and ReadWriteOncePod), and the StatefulSet controller.

use super::objects::{AccessMode, Binding, ClaimPhase, ClaimRef, PodPhase, VolumePhase, VolumeSource};
use super::{Cluster, Pod, Pvc};

impl Cluster {
    /// The StatefulSet controller: each ordinal below `replicas` has its pod, and each pod
    /// its claim from the volumeClaimTemplate (created once, never deleted by scaling).
    pub(super) fn reconcile_statefulsets(&mut self) {
        let sets: Vec<_> = self.statefulsets.values().cloned().collect();
        for set in sets {
            let (template, class, bytes) = &set.template;
            for ordinal in 0..set.replicas {
                let pod_name = format!("{}-{ordinal}", set.name);
                let claim = format!("{template}-{pod_name}");
                if !self.pvcs.contains_key(&claim) {
                    self.pvcs.insert(claim.clone(), Pvc::new(&claim, class, *bytes));
                }
                self.pods.entry(pod_name.clone()).or_insert_with(|| {
                    let mut pod = Pod::new(&pod_name).claim(template, &claim);
                    pod.owner = Some(set.name.clone());
                    pod
                });
            }
        }
    }

    /// The PV controller binds claims that name a PV (`spec.volumeName`) or have no class to
    /// a matching Available PV: same class, enough capacity, every requested access mode.
    pub(super) fn bind_static_claims(&mut self) {
        let pending: Vec<Pvc> = self
            .pvcs
            .values()
            .filter(|c| c.phase == ClaimPhase::Pending && !c.terminating)
            .filter(|c| c.volume_name.is_some() || c.class.is_empty())
            .cloned()
            .collect();
        for pvc in pending {
            let fits = |pv: &super::Pv| {
                pv.phase == VolumePhase::Available
                    && pv.claim.is_none()
                    && pv.class == pvc.class
                    && pv.capacity >= pvc.request
                    && pvc.access_modes.iter().all(|m| pv.access_modes.contains(m))
            };
            let chosen = match &pvc.volume_name {
                Some(name) => self.pvs.get(name).filter(|pv| fits(pv)).map(|pv| pv.name.clone()),
                None => self.pvs.values().filter(|pv| fits(pv)).min_by_key(|pv| pv.capacity).map(|pv| pv.name.clone()),
            };
            let Some(pv_name) = chosen else { continue };
            let pv = self.pvs.get_mut(&pv_name).expect("PV");
            pv.claim = Some(ClaimRef { name: pvc.name.clone(), uid: pvc.uid.clone() });
            pv.phase = VolumePhase::Bound;
            let capacity = pv.capacity;
            let claim = self.pvcs.get_mut(&pvc.name).expect("PVC");
            claim.volume_name = Some(pv_name);
            claim.phase = ClaimPhase::Bound;
            claim.capacity = capacity;
        }
    }

    /// csi-provisioner acts at once on Pending claims of Immediate classes.
    pub(super) async fn provision_immediate(&mut self) {
        let claims: Vec<String> = self
            .pvcs
            .values()
            .filter(|c| c.phase == ClaimPhase::Pending && !c.terminating && c.volume_name.is_none())
            .filter(|c| {
                self.classes
                    .get(&c.class)
                    .is_some_and(|sc| self.has_driver(&sc.provisioner) && sc.binding == Binding::Immediate)
            })
            .map(|c| c.name.clone())
            .collect();
        for claim in claims {
            let _ = self.provision(&claim).await;
        }
    }

    fn claims_of(pod: &Pod) -> Vec<String> {
        pod.volumes
            .iter()
            .filter_map(|v| match &v.source {
                VolumeSource::Claim(c) => Some(c.clone()),
                VolumeSource::Csi { .. } => None,
            })
            .collect()
    }

    /// Filters nodes for a pod and picks the one running the fewest pods (then by name).
    fn pick_node(&self, pod: &Pod) -> Result<String, String> {
        let claims = Self::claims_of(pod);
        for claim in &claims {
            let pvc = self.pvcs.get(claim).ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
            if pvc.phase != ClaimPhase::Bound {
                let delayed =
                    self.classes.get(&pvc.class).is_some_and(|sc| sc.binding == Binding::WaitForFirstConsumer);
                if !delayed {
                    return Err("pod has unbound immediate PersistentVolumeClaims".into());
                }
            }
            if pvc.access_modes.contains(&AccessMode::ReadWriteOncePod) {
                let others = self.pods_using(claim).into_iter().filter(|p| *p != pod.name);
                if others.into_iter().any(|p| self.pods[&p].node.is_some()) {
                    return Err(
                        "node(s) unavailable due to PVC with ReadWriteOncePod access mode already in-use by another pod"
                            .into(),
                    );
                }
            }
        }
        let mut reasons = Vec::new();
        let mut feasible = Vec::new();
        'nodes: for node in &self.nodes {
            if node.down {
                reasons.push("had untolerated taint {node.kubernetes.io/unreachable}");
                continue;
            }
            if pod.node_selector.as_ref().is_some_and(|s| *s != node.name) {
                reasons.push("didn't match Pod's node affinity/selector");
                continue;
            }
            for claim in &claims {
                let pvc = &self.pvcs[claim];
                match &pvc.volume_name {
                    Some(pv) => {
                        let pv = &self.pvs[pv];
                        if !pv.node_affinity.is_empty() && !pv.node_affinity.iter().any(|t| node.matches(t)) {
                            reasons.push("had volume node affinity conflict");
                            continue 'nodes;
                        }
                    }
                    None if self.classes.get(&pvc.class).is_some_and(|sc| {
                        self.has_driver(&sc.provisioner) && self.driver_named(&sc.provisioner).storage_capacity
                    }) =>
                    {
                        let room = self.capacity.get(&(node.name.clone(), pvc.class.clone())).copied().unwrap_or(0);
                        if u64::try_from(room).unwrap_or(0) < pvc.request {
                            reasons.push("did not have enough free storage");
                            continue 'nodes;
                        }
                    }
                    None => {}
                }
            }
            let load = self.pods.values().filter(|p| p.node.as_deref() == Some(&node.name)).count();
            feasible.push((load, node.name.clone()));
        }
        feasible.sort();
        feasible.first().map(|(_, n)| n.clone()).ok_or_else(|| {
            reasons.sort_unstable();
            reasons.dedup();
            format!("0/{} nodes are available: {}", self.nodes.len(), reasons.join(", "))
        })
    }

    /// The scheduler: places each unscheduled pod; for its unbound WaitForFirstConsumer
    /// claims it sets the selected node and waits for provisioning before binding the pod.
    pub(super) async fn schedule_pending(&mut self) {
        let pending: Vec<String> = self.pods.values().filter(|p| p.node.is_none()).map(|p| p.name.clone()).collect();
        for name in pending {
            let pod = self.pods[&name].clone();
            let node = match self.pick_node(&pod) {
                Ok(node) => node,
                Err(reason) => {
                    self.pods.get_mut(&name).expect("pod").phase = PodPhase::Pending(reason);
                    continue;
                }
            };
            let mut waiting = None;
            for claim in Self::claims_of(&pod) {
                if self.pvcs[&claim].phase == ClaimPhase::Bound {
                    continue;
                }
                self.pvcs.get_mut(&claim).expect("PVC").selected_node = Some(node.clone());
                if let Err(e) = self.provision(&claim).await {
                    waiting = Some(format!("waiting for volume {claim} to be provisioned: {e}"));
                    break;
                }
            }
            let pod = self.pods.get_mut(&name).expect("pod");
            if let Some(reason) = waiting {
                pod.phase = PodPhase::Pending(reason);
            } else {
                pod.node = Some(node);
                pod.phase = PodPhase::ContainerCreating(String::new());
            }
        }
    }

    /// pvc-protection: a terminating claim goes once no pod uses it; its PV is released.
    pub(super) fn finalize_claims(&mut self) {
        let done: Vec<String> = self
            .pvcs
            .values()
            .filter(|c| c.terminating && self.pods_using(&c.name).is_empty())
            .map(|c| c.name.clone())
            .collect();
        for name in done {
            let pvc = self.pvcs.remove(&name).expect("PVC");
            if let Some(pv) = pvc.volume_name.and_then(|n| self.pvs.get_mut(&n))
                && pv.claim.as_ref().is_some_and(|c| c.uid == pvc.uid)
            {
                pv.phase = VolumePhase::Released;
            }
        }
    }

    /// The PV controller reclaims released PVs per their policy.
    pub(super) async fn reclaim_released(&mut self) {
        let released: Vec<String> =
            self.pvs.values().filter(|pv| pv.phase == VolumePhase::Released).map(|pv| pv.name.clone()).collect();
        for pv in released {
            self.reclaim(&pv).await;
        }
    }

    /// The attach/detach controller: a VolumeAttachment whose volume no pod on that node
    /// needs any more, and which that node's kubelet no longer has staged, is detached
    /// (ControllerUnpublishVolume). Nodes that are down keep theirs.
    pub(super) async fn detach_unused(&mut self) {
        let mut wanted = std::collections::BTreeSet::new();
        for pod in self.pods.values() {
            let Some(node) = &pod.node else { continue };
            for claim in Self::claims_of(pod) {
                if let Some(pv) =
                    self.pvcs.get(&claim).and_then(|c| c.volume_name.as_ref()).and_then(|n| self.pvs.get(n))
                {
                    wanted.insert((pv.handle.clone(), node.clone()));
                }
            }
        }
        let stale: Vec<(String, String)> = self
            .attachments
            .keys()
            .filter(|k| !wanted.contains(*k))
            .filter(|(handle, node)| {
                self.nodes.iter().find(|n| n.name == *node).is_some_and(|n| !n.down && !n.staged.contains_key(handle))
            })
            .cloned()
            .collect();
        for (handle, node) in stale {
            let Some(pv) = self.pvs.values().find(|pv| pv.handle == handle).cloned() else {
                self.attachments.remove(&(handle, node));
                continue;
            };
            if let Err(e) = self.detach(&pv, &node).await {
                self.event(&format!("volumeattachment/{}-{node}", pv.name), e);
            }
        }
    }
}
